"""The shapes recipe with the decoder-only family (LlamaGen / Janus style):
the caption's 32 ids are a prefix of the 64 image tokens in one causal stack
of 4 layers (configs/t2i_shapes.py: a 1-layer encoder + 3 decoder layers with
cross-attention; similar parameter count). Same data, optimizer, sampling
and KV-cached AR sampler; guidance runs the empty caption as the prefix.

  vlgen train --config configs/t2i_shapes_decoder_only.py --workdir W \\
      --config.data.data_dir=TOKENS_DIR --config.data.tokenizer=TOKENIZER.model
"""
import os

from vlgen_jax.config import load_config


def get_config():
  c = load_config(os.path.join(os.path.dirname(__file__), "t2i_shapes.py"))
  c.model.update(family="decoder_only", decoder_layers=4)
  return c
