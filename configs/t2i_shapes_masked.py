"""The shapes recipe with the masked family (MaskGIT / MUSE): same data,
text encoder and layer sizes as configs/t2i_shapes.py, but the image decoder
is bidirectional, trained to fill a cosine-scheduled fraction of masked
tokens, and samples a whole 8x8 token image in `sample.steps` parallel steps
(vlgen_jax/sample/parallel.py) instead of 64 sequential ones.

  vlgen train --config configs/t2i_shapes_masked.py --workdir W \\
      --config.data.data_dir=TOKENS_DIR --config.data.tokenizer=TOKENIZER.model
  vlgen sample --workdir W --prompt "a large red circle in the center" --steps 8
"""
import os

from vlgen_jax.config import load_config


def get_config():
  c = load_config(os.path.join(os.path.dirname(__file__), "t2i_shapes.py"))
  c.model.family = "masked"
  # Parallel decoding: MaskGIT's cosine schedule and choice temperature; token
  # draws at the AR recipe's low temperature / top-k and plausibility floor.
  c.sample.update(steps=12, mask_schedule="cosine", choice_temperature=4.5,
                  temperature=0.3, top_k=16, plausibility=0.3, cfg_scale=1.0)
  return c
