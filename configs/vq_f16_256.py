"""VQ tokenizer for 256 px photos on GPUs/TPUs: factor 16 (16x16 tokens) and a
LlamaGen-like codebook of 16384 l2-normalised 8-dim codes.

    vlgen train --config configs/vq_f16_256.py --workdir runs/vq_f16 \\
        --config.data.source=tar --config.data.data_dir=DIR

The LlamaGen VQ-16 architecture (conv pyramid 128-128-256-256-512 channels,
four 2x downsamplings, attention-free here) with an L2 reconstruction loss
and a PatchGAN discriminator switched on after 20k steps; add a perceptual
loss with weights you have (docs/vq.md). Pairs with a Parti-size t2i config
on 16x16 tokens of 16384 codes (docs/own_data.md).
"""
from vlgen_jax.vq.defaults import vq_config


def get_config(arg: str = ""):
  del arg
  c = vq_config()
  c.model.update(dict(ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, z_channels=256,
                      patch_size=1, encoder_kernel=3, num_mid_blocks=2,
                      num_codes=16384, code_dim=8, l2_normalize=True, beta=0.25))
  c.batch_size = 128
  c.total_steps = 200_000
  c.optimizer.update(learning_rate=1e-4, schedule="constant", warmup_steps=0, b1=0.9, b2=0.95,
                     weight_decay=0.0, grad_clip_norm=1.0)
  c.loss.recon = "l2"
  c.loss.gan.update(enabled=True, start_step=20_000, weight=0.5)
  c.codebook.update(dict(restart=True, dead_after=200, num_recent=4096, usage_window=1000))
  c.log_every = 100
  c.eval_every = 5000
  c.checkpoint_every = 5000
  c.data.source = "tar"
  c.data.resolution = 256
  c.data.read_threads = 16
  return c
