"""Numerics options models read from the trainer config: compute dtype and
rematerialisation policy. Params are always float32; these pick what the
forward/backward pass computes in and what it keeps for the backward pass."""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from vlgen_jax.errors import UserError

_DTYPES = {
    "float32": jnp.float32, "fp32": jnp.float32,
    "bfloat16": jnp.bfloat16, "bf16": jnp.bfloat16,
    "float16": jnp.float16, "fp16": jnp.float16,
}

REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")


def compute_dtype(config) -> Any:
  """`config.dtype` as a jnp dtype; "auto" = bfloat16 on GPU/TPU, float32 on CPU."""
  name = str(config.get("dtype", "auto")).lower()
  if name == "auto":
    return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
  if name not in _DTYPES:
    raise UserError(f"config.dtype must be auto, float32, bfloat16 or float16, got: {name}")
  return _DTYPES[name]


def remat_policy(name: str) -> Callable | None:
  """The `jax.checkpoint` policy for `config.remat` (None = save nothing).

  "full" recomputes everything, "dots" keeps matmul outputs, "dots_no_batch"
  keeps only matmuls without batch dimensions (weights-times-activations).
  Callers skip rematerialisation entirely for "none".
  """
  if name not in REMAT_POLICIES:
    raise UserError(f"config.remat must be one of {', '.join(REMAT_POLICIES)}, got: {name}")
  if name == "dots":
    return jax.checkpoint_policies.checkpoint_dots
  if name == "dots_no_batch":
    return jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims
  return None


def maybe_remat(fn: Callable, name: str, **kwargs) -> Callable:
  """`fn` wrapped with `jax.checkpoint` under the named policy ("none": as is)."""
  policy = remat_policy(name)
  if name == "none":
    return fn
  return jax.checkpoint(fn, policy=policy, **kwargs)
