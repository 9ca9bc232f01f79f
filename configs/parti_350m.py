"""Parti-350M: 12 encoder / 12 decoder layers, d_model 1024, MLP 4096, 16 heads.

Default mesh: TPU v4-128 (64 chips), data=16, fsdp=4, tensor=1; global batch 1024.
Size it for another mesh without allocating anything:

  vlgen model-info --config configs/parti_350m.py --mesh data=..,fsdp=..,tensor=..
"""
from vlgen_jax.tasks.t2i_defaults import parti_config


def get_config():
  c = parti_config(encoder_layers=12, decoder_layers=12, d_model=1024, mlp_dim=4096, num_heads=16)
  c.mesh.update(data=16, fsdp=4, tensor=1)
  c.batch_size = 1024
  c.remat = "dots_no_batch"
  c.optimizer.name = "adamw"
  return c
