"""VQ tokenizer on 64 px `shapes`: factor 8 (8x8 tokens), 512 l2-normalised 8-dim codes.

    vlgen train --config configs/vq_shapes.py --workdir runs/vq_shapes \\
        --config.data.data_dir=data/shapes

Sized to train on a 2-core CPU in about 10 minutes (docs/vq.md has the
measured run).
"""
from __future__ import annotations

from vlgen_jax.shapes import scenes
from vlgen_jax.vq.defaults import vq_config


def get_config(arg: str = ""):
  del arg
  c = vq_config()
  # Encoder: 8x8 patches folded into channels, then per-token (1x1) residual
  # MLP; decoder: 3x3 residual convs over the 8x8 token grid, each token's
  # 8x8 pixels predicted from its features (depth-to-space). On shapes this
  # learns several times faster per step than a pixel-level conv pyramid
  # (docs/vq.md, "Recipe").
  c.model.update(dict(
      ch=192, ch_mult=(1,), num_res_blocks=1, num_mid_blocks=0, patch_size=8,
      encoder_kernel=1, z_channels=64, num_codes=512, code_dim=8, l2_normalize=True,
      beta=0.25))

  c.batch_size = 16
  c.total_steps = 3500
  c.optimizer.learning_rate = 3e-3
  c.optimizer.schedule = "cosine"
  c.optimizer.warmup_steps = 0
  c.optimizer.b2 = 0.95
  c.optimizer.grad_clip_norm = 1.0

  c.loss.recon = "l2"
  c.codebook.update(dict(restart=True, dead_after=50, num_recent=1024, usage_window=100))

  c.log_every = 100
  c.eval_every = 500
  c.eval_steps = 4
  c.checkpoint_every = 1000
  c.vq_eval.num_examples = 500

  c.evaluators = ("shapes",)  # caption fidelity of the reconstructions
  c.data.name = scenes.dataset_name()  # built on first use (the spec's split sizes)
  c.data.data_dir = ""  # where `shapes` is built; set on the command line
  c.data.resolution = 64
  c.data.read_threads = 2
  return c
