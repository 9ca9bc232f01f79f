"""Parti (Yu et al. 2022, Table 1) at four sizes: `configs/parti.py:SIZE`.

  SIZE   layers (enc/dec)  d_model  MLP    heads  default mesh (data,fsdp,tensor)  batch
  350m   12 / 12           1024     4096   16     16, 4, 1   (TPU v4-128)          1024
  750m   12 / 36           1024     4096   16     16, 8, 1                          2048
  3b     12 / 36           2048     8192   32     8, 32, 1                          4096
  20b    16 / 64           4096     16384  64     4, 64, 4                          8192

Size one for another mesh without allocating anything:

  vlgen model-info --config configs/parti.py:3b --mesh data=..,fsdp=..,tensor=..
"""
from vlgen_jax.errors import UserError
from vlgen_jax.tasks.t2i_defaults import parti_config

SIZES = {
    # size: (encoder_layers, decoder_layers, d_model, mlp_dim, num_heads, mesh, batch, remat)
    "350m": (12, 12, 1024, 4096, 16, (16, 4, 1), 1024, "dots_no_batch"),
    "750m": (12, 36, 1024, 4096, 16, (16, 8, 1), 2048, "dots_no_batch"),
    "3b": (12, 36, 2048, 8192, 32, (8, 32, 1), 4096, "full"),
    "20b": (16, 64, 4096, 16384, 64, (4, 64, 4), 8192, "full"),
}


def get_config(size: str = "350m"):
  if size not in SIZES:
    raise UserError(f"configs/parti.py:SIZE takes one of {', '.join(SIZES)}, got {size!r}")
  enc, dec, d, mlp, heads, (data, fsdp, tensor), batch, remat = SIZES[size]
  c = parti_config(encoder_layers=enc, decoder_layers=dec, d_model=d, mlp_dim=mlp,
                   num_heads=heads)
  c.mesh.update(data=data, fsdp=fsdp, tensor=tensor)
  c.batch_size = batch
  c.remat = remat
  if size in ("350m", "750m"):
    c.optimizer.name = "adamw"  # Adafactor (parti_config's) for the larger ones
  return c
