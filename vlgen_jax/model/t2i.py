"""The text-to-image model: text encoder + causal image-token decoder.

Image sequence convention (N = H'*W' tokens, codes 0..K-1, BOS id = K):
  decoder input  = [BOS, t_0, ..., t_{N-2}]
  targets        = [t_0, ..., t_{N-1}]
Input index i carries the 2-D position (i // W', i % W') of the token it
predicts. Logits of ids >= K (BOS, vocabulary padding) are masked, so they
are never predicted.

Decode API (one prompt batch, tokens decoded in lock-step), shared with the
decoder-only family (vlgen_jax/model/decoder_only.py):
  cache = model.apply(v, text_ids, method="prefill")
  logits, cache = model.apply(v, token, position, cache, method="decode_step")
where `token` (B,) is the decoder input at sequence index `position`
(BOS at 0). Cross-attention keys/values are computed once, in `init_cache`.
`decode_window` runs T inputs at once (Jacobi decoding's draft window), from
a start position per row. Both update the cache in place when it is carried
through a loop (or donated to a jitted call).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from vlgen_jax.model import layers
from vlgen_jax.model.image_decoder import CACHE_AXES, ImageDecoder, unstack_decoder_layers
from vlgen_jax.model.spec import ModelSpec
from vlgen_jax.model.text_encoder import TextEncoder

Cache = dict[str, Any]


class Model(nn.Module):
  spec: ModelSpec

  def setup(self):
    dtype = self.spec.compute_dtype()
    self.encoder = TextEncoder(self.spec, dtype)
    self.decoder = ImageDecoder(self.spec, dtype)

  def __call__(self, text_ids, image_tokens, train: bool = False):
    """text_ids (B, L), image_tokens (B, N) -> fp32 logits (B, N, V_padded)."""
    encoded, text_mask = self.encoder(text_ids, deterministic=not train, remat=train)
    inputs = decoder_inputs(image_tokens, self.spec.image_bos_id)
    return self.decoder(inputs, mode="train", encoded=encoded, text_mask=text_mask,
                        deterministic=not train, remat=train)

  def encode_text(self, text_ids):
    """text_ids (B, L) -> (encoded (B, L, d), text_mask (B, L) bool)."""
    return self.encoder(text_ids, deterministic=True)

  def init_cache(self, encoded, text_mask) -> Cache:
    """Static-size decode cache, one (B, heads, N, kv) K and V buffer per
    layer; cross-attention K/V computed here, once."""
    s = self.spec
    cross_k, cross_v = self.decoder(None, mode="cross_kv", encoded=encoded)
    shape = (encoded.shape[0], s.num_heads, s.num_image_tokens, s.head_dim)
    empty = lambda: tuple(layers.constrain(jnp.zeros(shape, cross_k[0].dtype), CACHE_AXES)  # noqa: E731
                          for _ in range(s.decoder_layers))
    return {"self_k": empty(), "self_v": empty(), "cross_k": cross_k, "cross_v": cross_v,
            "text_mask": text_mask}

  def prefill(self, text_ids) -> Cache:
    """text_ids (B, L) -> the decode cache (text encoded, cross K/V computed)."""
    return self.init_cache(*self.encode_text(text_ids))

  def decode_params(self, params):
    """`params` as decode loops pass them to `decode_step` / `decode_window`:
    the decoder's layers split once, outside the loop (`unstack_decoder_layers`)."""
    return unstack_decoder_layers(params, self.spec.decoder_layers)

  def decode_step(self, token, position, cache: Cache):
    """token (B,) int at sequence index `position` (scalar) -> (fp32 logits (B, V), cache)."""
    logits, cache = self.decoder(jnp.asarray(token, jnp.int32)[:, None], mode="decode",
                                 cache=cache, position=position)
    return logits[:, 0], cache

  def decode_window(self, tokens, start, cache: Cache):
    """tokens (B, T) at sequence indices start .. start + T - 1 (`start` a
    scalar or (B,), with start + T <= num_image_tokens) -> (logits (B, T, V), cache)."""
    return self.decoder(jnp.asarray(tokens, jnp.int32), mode="decode", cache=cache,
                        position=start)


def decoder_inputs(image_tokens, bos_id: int):
  """[BOS, t_0 .. t_{N-2}] from the target tokens (B, N)."""
  bos = jnp.full((image_tokens.shape[0], 1), bos_id, image_tokens.dtype)
  return jnp.concatenate([bos, image_tokens[:, :-1]], axis=1)
