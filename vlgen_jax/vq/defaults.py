"""Every field of a VQ tokenizer config, with its meaning. `configs/vq_*.py`
start from `vq_config()` and change what they need."""
from __future__ import annotations

import ml_collections

from vlgen_jax.data.pipeline import default_data_config
from vlgen_jax.train.defaults import trainer_config


def vq_config() -> ml_collections.ConfigDict:
  c = trainer_config()
  c.task = "vq"

  # Architecture (vlgen_jax/vq/model.py:VQConfig). Downsampling factor =
  # patch_size * 2 ** (len(ch_mult) - 1).
  c.model = ml_collections.ConfigDict({
      "ch": 64,                  # channels of the first level
      "ch_mult": (1, 1, 2, 2),   # channel multiplier per level
      "num_res_blocks": 1,       # per level (decoder: one more)
      "z_channels": 64,          # encoder output / decoder input channels
      "attn": False,             # self-attention at the lowest resolution
      "norm_groups": 8,          # GroupNorm groups (gcd with the channels)
      "patch_size": 1,           # space-to-depth before the first conv (1 = off)
      "encoder_kernel": 3,       # 3: 3x3 encoder convs; 1: each token sees only its patch
      "num_mid_blocks": 2,       # ResBlocks at the lowest resolution (encoder and decoder)
      "num_codes": 512,          # codebook size
      "code_dim": 8,             # low code dimension (LlamaGen: 8)
      "l2_normalize": True,      # l2-normalised inputs and codes
      "beta": 0.25,              # commitment weight
      "entropy_temperature": 0.01,
  })

  c.loss = ml_collections.ConfigDict({
      "recon": "l2",             # l1 | l2
      "recon_weight": 1.0,
      "codebook_weight": 1.0,
      "entropy_weight": 0.0,     # > 0 adds the entropy loss (needs soft assignments)
      # Perceptual loss: off (needs pretrained weights; see vq/perceptual.py, docs/vq.md).
      "perceptual": "",          # a registered name, e.g. "lpips"
      "perceptual_weight": 0.0,
      "perceptual_weights": "",  # weights file of the chosen perceptual loss
      "gan": {
          "enabled": False,      # PatchGAN discriminator with hinge loss
          "start_step": 0,       # GAN terms switch on at this training step
          "weight": 0.1,         # generator GAN loss weight (times the adaptive weight)
          "adaptive": True,      # VQGAN adaptive weight at the decoder's last layer
          "ch": 64,
          "num_layers": 3,
      },
  })

  # Steps here count training batches seen (micro-batches with accumulation).
  c.codebook = ml_collections.ConfigDict({
      "usage_window": 100,       # steps of the rolling usage window
      "restart": True,           # dead-code restart in post_update
      "dead_after": 50,          # steps without a pick before a code is restarted
      "num_recent": 1024,        # encoder outputs kept for restarts
      "restart_noise": 0.0,      # std of noise added to restarted codes
  })

  # Periodic evaluation (Task.evaluate) on the first `num_examples` records
  # of config.eval_split: PSNR, codebook usage, a reconstruction grid and
  # the evaluators below on the reconstructions.
  c.vq_eval = ml_collections.ConfigDict({
      "num_examples": 500,
      "batch_size": 100,
      "grid_examples": 8,
  })
  # Evaluators (vlgen_jax/eval/evaluators.py) that apply to the data, e.g.
  # ("shapes",): caption fidelity of the reconstructions.
  c.evaluators = ()

  c.data = default_data_config()
  c.data.tokenizer = ""          # a VQ tokenizer needs no text ids

  # A discriminator, when enabled, gets its own optimizer; unset fields come
  # from config.optimizer.
  c.optimizers = ml_collections.ConfigDict({
      "generator": {},
      "discriminator": {"learning_rate": 1e-4},
  })
  return c
