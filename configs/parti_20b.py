"""Parti-20B: 16 encoder / 64 decoder layers, d_model 4096, MLP 16384, 64 heads.

Default mesh: TPU v4-2048 (1024 chips), data=4, fsdp=64, tensor=4; global batch 8192.
Size it for another mesh without allocating anything:

  vlgen model-info --config configs/parti_20b.py --mesh data=..,fsdp=..,tensor=..
"""
from vlgen_jax.tasks.t2i_defaults import parti_config


def get_config():
  c = parti_config(encoder_layers=16, decoder_layers=64, d_model=4096, mlp_dim=16384, num_heads=64)
  c.mesh.update(data=4, fsdp=64, tensor=4)
  c.batch_size = 8192
  c.remat = "full"
  return c
