"""VQ tokenizer for your own captioned images (folder or tar shards).

    vlgen train --config configs/vq_own.py --workdir runs/vq \\
        --config.data.source=folder --config.data.data_dir=DIR [--config.data.resolution=64]

`vlgen demo --data DIR` trains this config with a recipe derived from the
data (factor, codes, width and steps in W/recipe.json; docs/own_data.md).
The defaults here are its quick recipe for 64 px images: factor 8 (an 8x8
token grid), 1024 l2-normalised 8-dim codes, a patch encoder and a
residual-conv decoder over the token grid (the shapes recipe's architecture,
configs/vq_shapes.py, wider: detailed images need more than its 192
channels and 512 codes).
"""
from __future__ import annotations

from vlgen_jax.vq.defaults import vq_config


def get_config(arg: str = ""):
  del arg
  c = vq_config()
  c.model.update(dict(
      ch=256, ch_mult=(1,), num_res_blocks=2, num_mid_blocks=0, patch_size=8,
      encoder_kernel=1, z_channels=64, num_codes=1024, code_dim=8, l2_normalize=True,
      beta=0.25))
  c.batch_size = 16
  c.total_steps = 2000
  c.optimizer.update(learning_rate=3e-3, schedule="cosine", warmup_steps=0, b2=0.95,
                     grad_clip_norm=1.0)
  c.loss.recon = "l2"
  c.codebook.update(dict(restart=True, dead_after=50, num_recent=1024, usage_window=100))
  c.log_every = 100
  c.eval_every = 0
  c.eval_steps = 4
  c.checkpoint_every = 500
  c.vq_eval.num_examples = 200
  c.data.source = "folder"
  c.data.data_dir = ""  # set on the command line
  c.data.resolution = 64
  c.data.read_threads = 2
  return c
