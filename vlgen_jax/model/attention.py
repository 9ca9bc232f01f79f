"""Multi-head attention: projections, full-sequence attention and cached decode.

One `Attention` module serves self- and cross-attention; its methods split
the work so callers can compute keys/values once (cross-attention during
decode) and keep them in a static-size cache (self-attention during decode).
The full forward uses `jax.nn.dot_product_attention` (XLA by default; cuDNN
flash attention with `config.model.attention_impl="cudnn"` on GPUs). Decode
steps attend with a position mask over a static-size cache per layer, laid
out (batch, heads, length, kv) so the score and value matmuls read it without
a transpose, and updated in place (`write_cache`: a `dynamic_update_slice` of
a loop-carried buffer, which XLA aliases instead of copying).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vlgen_jax.model import layers
from vlgen_jax.model.spec import ModelSpec


class Attention(nn.Module):
  """Projections (embed -> heads x kv) plus attention; `rope` is None, "1d" or "2d"."""
  spec: ModelSpec
  dtype: Any = jnp.float32
  rope: str | None = None

  def setup(self):
    s = self.spec
    heads_kv = (s.num_heads, s.head_dim)
    self.query = layers.DenseGeneral(heads_kv, ("embed", "heads", "kv"), dtype=self.dtype)
    self.key = layers.DenseGeneral(heads_kv, ("embed", "heads", "kv"), dtype=self.dtype)
    self.value = layers.DenseGeneral(heads_kv, ("embed", "heads", "kv"), dtype=self.dtype)
    self.out = layers.DenseGeneral((s.d_model,), ("heads", "kv", "embed"), axis=(-2, -1),
                                   dtype=self.dtype)
    if s.qk_norm:
      self.query_norm = layers.Norm("rmsnorm", s.norm_eps, self.dtype)
      self.key_norm = layers.Norm("rmsnorm", s.norm_eps, self.dtype)

  def _position(self, x, positions):
    if self.rope == "1d":
      return layers.rope(x, positions, self.spec.rope_theta)
    if self.rope == "2d":
      rows, cols = layers.image_rows_cols(positions, self.spec.image_grid)
      return layers.rope_2d(x, rows, cols, self.spec.rope_theta)
    return x

  def queries(self, x, positions=None):
    q = self.query(x)
    if self.spec.qk_norm:
      q = self.query_norm(q)
    q = self._position(q, positions)
    return layers.constrain(q, layers.BATCH_LENGTH_HEADS_KV)

  def keys_values(self, x, positions=None):
    k, v = self.key(x), self.value(x)
    if self.spec.qk_norm:
      k = self.key_norm(k)
    k = self._position(k, positions)
    return (layers.constrain(k, layers.BATCH_LENGTH_HEADS_KV),
            layers.constrain(v, layers.BATCH_LENGTH_HEADS_KV))

  def attend(self, q, k, v, *, key_mask=None, causal: bool = False):
    """Full-sequence attention. `key_mask` (B, S) bool marks valid keys.

    With cuDNN the padding must be trailing (ids then pads), as produced by the
    text tokenizer: it is passed as key lengths.
    """
    if self.spec.attention_impl == "cudnn":
      lengths = None if key_mask is None else jnp.sum(key_mask, axis=-1, dtype=jnp.int32)
      out = jax.nn.dot_product_attention(q, k, v, is_causal=causal, key_value_seq_lengths=lengths,
                                         implementation="cudnn")
    else:
      mask = None if key_mask is None else key_mask[:, None, None, :]
      out = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal,
                                         implementation="xla")
    out = layers.constrain(out, layers.BATCH_LENGTH_HEADS_KV)
    return self.out(out)

  def attend_cached(self, q, k_cache, v_cache, mask):
    """T queries (B, T, N, H) against a cache (B, N, S, H), or against the
    first chunks of a chunked one (a tuple of (B, N, S_i, H) buffers, read
    as their concatenation; see `write_cache`); `mask` broadcasts to
    (B, N, T, sum S_i) and marks the keys each query may see. Scores and
    softmax in float32, as in the full forward."""
    k_chunks, v_chunks = cache_chunks(k_cache), cache_chunks(v_cache)
    scores = [jnp.einsum("btnh,bnsh->bnts", q, k, preferred_element_type=jnp.float32)
              for k in k_chunks]
    scores = scores[0] if len(scores) == 1 else jnp.concatenate(scores, axis=-1)
    scores = jnp.where(mask, scores * (q.shape[-1] ** -0.5), jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v_chunks[0].dtype)
    # probs as the left operand, so the dot is (t, s) @ (s, h) per (b, n):
    # written as an einsum to "btnh", XLA made V the left operand (contracting
    # its non-minor dim), which XLA:CPU runs outside its fast matmul kernels.
    starts = np.cumsum([0] + [v.shape[2] for v in v_chunks])
    outs = [jax.lax.dot_general(probs if len(v_chunks) == 1 else probs[..., start:stop], v,
                                (((3,), (2,)), ((0, 1), (0, 1))))
            for v, start, stop in zip(v_chunks, starts[:-1], starts[1:])]
    return self.out(jnp.swapaxes(sum(outs[1:], outs[0]), 1, 2))


def to_cache_layout(x):
  """(B, T, N, H) keys/values -> the cache layout (B, N, T, H)."""
  return jnp.swapaxes(x, 1, 2)


def cache_chunks(cache) -> tuple:
  """A layer's cache as its tuple of chunk buffers (one for an unchunked cache)."""
  return cache if isinstance(cache, tuple) else (cache,)


def cache_length(cache) -> int:
  """The number of sequence slots a decode step sees in `cache`: all of an
  unchunked buffer's, the sum over a chunked one's chunks."""
  return sum(c.shape[2] for c in cache_chunks(cache))


def write_cache(cache, new, start):
  """Writes `new` (B, T, N, H) into `cache` (B, N, S, H) at sequence index
  `start`: a scalar (all rows) or (B,) per row.

  A `dynamic_update_slice` of a buffer carried through the decode loop: XLA
  updates it in place. Indices past S - T would be clamped, so callers keep
  windows inside the cache.

  `cache` may also be a tuple of chunk buffers that split the sequence into
  consecutive pieces: the first chunks of a longer cache, of which the window
  lies in the last (the AR sampler passes chunks 0..c while it decodes chunk
  c, so attention reads only the filled part of the cache instead of masking
  the whole of it: docs/sampling.md). The last chunk is written; the others
  are returned as they are.
  """
  if isinstance(cache, tuple):
    offset = cache_length(cache) - cache[-1].shape[2]
    return cache[:-1] + (write_cache(cache[-1], new, start - offset if offset else start),)
  new = to_cache_layout(new).astype(cache.dtype)
  zero = jnp.zeros((), jnp.int32)
  if jnp.ndim(start) == 0:
    return jax.lax.dynamic_update_slice(cache, new, (zero, zero, start, zero))
  row = lambda c, n, s: jax.lax.dynamic_update_slice(c, n, (zero, s, zero))  # noqa: E731
  return jax.vmap(row)(cache, new, start)
