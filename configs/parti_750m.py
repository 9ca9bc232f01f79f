"""Parti-750M: 12 encoder / 36 decoder layers, d_model 1024, MLP 4096, 16 heads.

Default mesh: TPU v4-256 (128 chips), data=16, fsdp=8, tensor=1; global batch 2048.
Size it for another mesh without allocating anything:

  vlgen model-info --config configs/parti_750m.py --mesh data=..,fsdp=..,tensor=..
"""
from vlgen_jax.tasks.t2i_defaults import parti_config


def get_config():
  c = parti_config(encoder_layers=12, decoder_layers=36, d_model=1024, mlp_dim=4096, num_heads=16)
  c.mesh.update(data=16, fsdp=8, tensor=1)
  c.batch_size = 2048
  c.remat = "dots_no_batch"
  c.optimizer.name = "adamw"
  return c
