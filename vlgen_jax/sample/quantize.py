"""int8 weight-only quantisation of the image decoder's matmuls, for sampling.

Each decoder-layer kernel (attention projections, MLP) is stored as int8
with one float32 scale per output feature (symmetric, max-abs over the
contracted dims); `layers.DenseGeneral` multiplies its output by the scale
when the params carry `kernel_scale`. Activations stay in the compute dtype.
A decode step reads the weights once per token, so int8 halves the weight
bytes of bfloat16 (a quarter of float32). Embeddings, the logits layer and
the text encoder (run once per prompt) stay as they are.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

# Kernels contracting two input dims (heads, kv); all others contract one.
_TWO_INPUT_DIMS = ("out",)


def quantize_int8(params):
  """params (unboxed; decoder layers stacked on a leading axis) -> the same tree
  with each decoder-layer `kernel` int8 and a `kernel_scale` next to it."""

  def walk(tree, name):
    if "kernel" in tree and not isinstance(tree["kernel"], dict):
      kernel = jnp.asarray(tree["kernel"], jnp.float32)
      n_in = 2 if name in _TWO_INPUT_DIMS else 1
      contracted = tuple(range(1, 1 + n_in))  # dim 0 is the stacked layer axis
      scale = jnp.max(jnp.abs(kernel), axis=contracted, keepdims=True) / 127.0
      scale = jnp.where(scale == 0, 1.0, scale)
      q = jnp.clip(jnp.round(kernel / scale), -127, 127).astype(jnp.int8)
      return dict(tree, kernel=q, kernel_scale=jnp.squeeze(scale, contracted))
    return {k: walk(v, k) if isinstance(v, dict) else v for k, v in tree.items()}

  params = dict(params)
  decoder = dict(params["decoder"])
  decoder["layers"] = walk(decoder["layers"], "layers")
  params["decoder"] = decoder
  return params


def weight_bytes(tree) -> int:
  return sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(tree))
