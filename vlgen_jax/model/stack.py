"""`nn.scan` over identical layers with an optional remat policy.

Scanned params are stacked on a leading axis named "layers" (so sharding
rules see it), and compile time stays flat in depth. Decode reads the same
stacked weights one layer at a time (`image_decoder.split_layers`, `decode_layers`).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn

from vlgen_jax.train import numerics


def layer_stack(layer_cls: type[nn.Module], *, num_layers: int, in_axes: Any, remat: str = "none",
                name: str, unroll: int = 1, **layer_kwargs) -> nn.Module:
  """Returns a module calling `layer_cls` `num_layers` times: `(carry, *args) -> (carry, ys)`.

  `in_axes` gives each positional argument after the carry: `nn.broadcast`
  (same for every layer) or 0 (one slice per layer). `unroll` > 1 unrolls
  the layer loop (faster steps on XLA:CPU for small models).
  """
  cls = layer_cls
  if remat != "none":
    # prevent_cse is unnecessary under scan and blocks XLA optimisations.
    cls = nn.remat(cls, policy=numerics.remat_policy(remat), prevent_cse=False)
  scanned = nn.scan(
      cls,
      variable_axes={"params": 0},
      split_rngs={"params": True, "dropout": True},
      in_axes=in_axes,
      length=num_layers,
      unroll=unroll,
      metadata_params={nn.PARTITION_NAME: "layers"},
  )
  return scanned(name=name, **layer_kwargs)
