"""Parti-3B: 12 encoder / 36 decoder layers, d_model 2048, MLP 8192, 32 heads.

Default mesh: TPU v4-512 (256 chips), data=8, fsdp=32, tensor=1; global batch 4096.
Size it for another mesh without allocating anything:

  vlgen model-info --config configs/parti_3b.py --mesh data=..,fsdp=..,tensor=..
"""
from vlgen_jax.tasks.t2i_defaults import parti_config


def get_config():
  c = parti_config(encoder_layers=12, decoder_layers=36, d_model=2048, mlp_dim=8192, num_heads=32)
  c.mesh.update(data=8, fsdp=32, tensor=1)
  c.batch_size = 4096
  c.remat = "full"
  return c
