"""VQ tokenizer on 64 px `shapes`: factor 8 (8x8 tokens), 512 l2-normalised 8-dim codes.

    vlgen train --config configs/vq_shapes.py --workdir runs/vq_shapes \\
        --config.data.data_dir=data/shapes

Sized to train on a 2-core CPU in about 10 minutes (docs/vq.md has the
measured run). Flat colors on black need little capacity: 4x4 patches are
folded into channels (space-to-depth), so all convs run at 16x16 and 8x8.
"""
from __future__ import annotations

from vlgen_jax.vq.defaults import vq_config


def get_config(arg: str = ""):
  del arg
  c = vq_config()
  c.model.ch = 64
  c.model.ch_mult = (1, 2)
  c.model.num_res_blocks = 1
  c.model.patch_size = 4
  c.model.z_channels = 64
  c.model.num_codes = 512
  c.model.code_dim = 8

  c.batch_size = 16
  c.total_steps = 1500
  c.optimizer.learning_rate = 2e-3
  c.optimizer.warmup_steps = 0
  c.optimizer.b2 = 0.95

  c.codebook.dead_after = 50
  c.codebook.num_recent = 1024

  c.log_every = 50
  c.eval_every = 500
  c.eval_steps = 2
  c.checkpoint_every = 500
  c.vq_eval.num_examples = 500

  c.data.data_dir = ""  # where `shapes` is built on first use; set on the command line
  c.data.resolution = 64
  c.data.read_threads = 2
  return c
