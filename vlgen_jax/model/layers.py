"""Building blocks with logical axis names: dense, embedding, norms, MLP, positions.

Params are always float32 and carry logical names (`nn.with_logical_partitioning`)
from the shared vocabulary in `vlgen_jax/tasks/base.py`; activations get
`nn.with_logical_constraint`, a no-op unless a mesh and rules are active.
Computation runs in `dtype` (the compute dtype); norms and RoPE in float32.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any

BATCH_LENGTH_EMBED = ("activation_batch", "activation_length", "activation_embed")
BATCH_LENGTH_HEADS_KV = ("activation_batch", "activation_length", "activation_heads", "activation_kv")
BATCH_LENGTH_MLP = ("activation_batch", "activation_length", "activation_mlp")
BATCH_LENGTH_VOCAB = ("activation_batch", "activation_length", "activation_vocab")


def constrain(x, names: Sequence[str | None]):
  return nn.with_logical_constraint(x, tuple(names))


def _normalize_axes(axes: Sequence[int], ndim: int) -> tuple[int, ...]:
  return tuple(a % ndim for a in axes)


class DenseGeneral(nn.Module):
  """`x @ kernel` contracting `axis` of x with the kernel's leading dims.

  The kernel has shape `x.shape[axis] + features` and logical names
  `kernel_axes` (one per kernel dim). Init is fan-in scaled over all
  contracted dims, so a (embed, heads, kv) query and an (embed, mlp) MLP
  kernel are initialised alike.
  """
  features: tuple[int, ...]
  kernel_axes: tuple[str | None, ...]
  axis: tuple[int, ...] = (-1,)
  dtype: Dtype = jnp.float32
  init_scale: float = 1.0
  out_dtype: Dtype | None = None  # e.g. float32 logits from bfloat16 inputs

  @nn.compact
  def __call__(self, x):
    axis = _normalize_axes(self.axis, x.ndim)
    if axis != tuple(range(x.ndim - len(axis), x.ndim)):
      raise ValueError(f"DenseGeneral contracts trailing axes only, got {self.axis}")
    in_shape = tuple(x.shape[a] for a in axis)
    shape = in_shape + tuple(self.features)
    if len(self.kernel_axes) != len(shape):
      raise ValueError(f"kernel_axes {self.kernel_axes} do not match kernel shape {shape}")
    init = nn.initializers.variance_scaling(
        self.init_scale, "fan_in", "truncated_normal",
        in_axis=tuple(range(len(in_shape))), out_axis=tuple(range(len(in_shape), len(shape))))
    kernel = self.param("kernel", nn.with_logical_partitioning(init, self.kernel_axes),
                        shape, jnp.float32)
    kernel = jnp.asarray(kernel, self.dtype)
    x = jnp.asarray(x, self.dtype)
    contract = (axis, tuple(range(len(in_shape))))
    y = jax.lax.dot_general(x, kernel, (contract, ((), ())),
                            preferred_element_type=self.out_dtype)
    if self.has_variable("params", "kernel_scale"):
      # int8 weight-only quantisation (vlgen_jax/sample/quantize.py): the kernel
      # holds int8 values, one float scale per output feature.
      y = y * jnp.asarray(self.get_variable("params", "kernel_scale"), y.dtype)
    return y


class Embed(nn.Module):
  """Lookup table (num_embeddings, features) with logical names `axes`."""
  num_embeddings: int
  features: int
  axes: tuple[str | None, str | None] = ("vocab", "embed")
  dtype: Dtype = jnp.float32
  stddev: float = 1.0

  def setup(self):
    self.embedding = self.param(
        "embedding", nn.with_logical_partitioning(nn.initializers.normal(self.stddev), self.axes),
        (self.num_embeddings, self.features), jnp.float32)

  def __call__(self, ids):
    return jnp.take(jnp.asarray(self.embedding, self.dtype), ids, axis=0)


class Norm(nn.Module):
  """RMSNorm or LayerNorm over the last axis, statistics in float32."""
  kind: str = "rmsnorm"
  eps: float = 1e-6
  dtype: Dtype = jnp.float32
  axes: tuple[str | None] = ("norm",)

  @nn.compact
  def __call__(self, x):
    features = x.shape[-1]
    x32 = jnp.asarray(x, jnp.float32)
    if self.kind == "layernorm":
      x32 = x32 - jnp.mean(x32, axis=-1, keepdims=True)
    y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, self.axes),
                       (features,), jnp.float32)
    y = y * scale
    if self.kind == "layernorm":
      bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, self.axes),
                        (features,), jnp.float32)
      y = y + bias
    return jnp.asarray(y, self.dtype)


class MLP(nn.Module):
  """GELU or squared-ReLU (wi, wo), or SwiGLU (wi_gate, wi, wo) feed-forward block."""
  d_model: int
  mlp_dim: int
  kind: str = "gelu"
  dropout: float = 0.0
  deterministic: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = DenseGeneral((self.mlp_dim,), ("embed", "mlp"), dtype=self.dtype, name="wi")(x)
    if self.kind == "swiglu":
      gate = DenseGeneral((self.mlp_dim,), ("embed", "mlp"), dtype=self.dtype, name="wi_gate")(x)
      h = nn.silu(gate) * h
    elif self.kind == "relu2":
      h = jnp.square(nn.relu(h))
    else:
      h = nn.gelu(h, approximate=True)
    h = constrain(h, BATCH_LENGTH_MLP)
    h = nn.Dropout(self.dropout)(h, deterministic=self.deterministic)
    return DenseGeneral((self.d_model,), ("mlp", "embed"), dtype=self.dtype, name="wo")(h)


# ---- positions ------------------------------------------------------------------

def rope(x, positions, theta: float):
  """Rotary embedding of x (B, T, N, H) at integer `positions` (B, T) or (T,)."""
  head_dim = x.shape[-1]
  half = head_dim // 2
  freqs = theta ** (-np.arange(half, dtype=np.float32) / half)
  angles = jnp.asarray(positions, jnp.float32)[..., None] * freqs  # (..., T, half)
  angles = angles[..., None, :]  # broadcast over heads
  sin, cos = jnp.sin(angles), jnp.cos(angles)
  x32 = jnp.asarray(x, jnp.float32)
  x1, x2 = x32[..., :half], x32[..., half:]
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return jnp.asarray(out, x.dtype)


def rope_2d(x, rows, cols, theta: float):
  """2-D RoPE: the first half of each head rotates with the row, the second with the column."""
  half = x.shape[-1] // 2
  return jnp.concatenate([rope(x[..., :half], rows, theta), rope(x[..., half:], cols, theta)],
                         axis=-1)


def image_rows_cols(positions, grid: tuple[int, int]):
  """Sequence index -> (row, col) of the image token it predicts."""
  positions = jnp.asarray(positions, jnp.int32)
  return positions // grid[1], positions % grid[1]


class LearnedPositions2D(nn.Module):
  """Row + column embeddings for a (H', W') token grid, indexed by sequence position."""
  grid: tuple[int, int]
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, positions):
    rows, cols = image_rows_cols(positions, self.grid)
    row_emb = Embed(self.grid[0], self.features, axes=(None, "embed"), dtype=self.dtype,
                    name="row")(rows)
    col_emb = Embed(self.grid[1], self.features, axes=(None, "embed"), dtype=self.dtype,
                    name="col")(cols)
    return row_emb + col_emb
