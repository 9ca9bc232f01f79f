"""Bidirectional transformer encoder over SentencePiece ids with a padding mask."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from vlgen_jax.model import layers
from vlgen_jax.model.attention import Attention
from vlgen_jax.model.spec import ModelSpec
from vlgen_jax.model.stack import layer_stack


class EncoderLayer(nn.Module):
  """Pre-norm block: self-attention over valid (non-pad) keys, then MLP.

  Shared by the text encoder and the captioner's image encoder; `rope` is
  None, "1d" (text) or "2d" (image grid), see `Attention`.
  """
  spec: ModelSpec
  dtype: Any = jnp.float32
  deterministic: bool = True
  rope: str | None = None

  @nn.compact
  def __call__(self, x, key_mask, positions):
    s = self.spec
    attn = Attention(s, self.dtype, rope=self.rope, name="self_attention")
    h = layers.Norm(s.norm, s.norm_eps, self.dtype, name="pre_attention_norm")(x)
    q = attn.queries(h, positions)
    k, v = attn.keys_values(h, positions)
    h = attn.attend(q, k, v, key_mask=key_mask)
    x = x + nn.Dropout(s.dropout)(h, deterministic=self.deterministic)
    h = layers.Norm(s.norm, s.norm_eps, self.dtype, name="pre_mlp_norm")(x)
    h = layers.MLP(s.d_model, s.mlp_dim, s.mlp, s.dropout, self.deterministic, self.dtype,
                   name="mlp")(h)
    x = x + nn.Dropout(s.dropout)(h, deterministic=self.deterministic)
    return layers.constrain(x, layers.BATCH_LENGTH_EMBED), None


def encode(spec: ModelSpec, dtype, x, key_mask, positions, *, deterministic: bool, remat: bool,
           rope: str | None):
  """The scanned `EncoderLayer`s ("layers") and the final norm ("final_norm")
  over embedded inputs x (B, L, d_model). Built inside the caller's compact
  `__call__` (its params are the caller's); shared by the text encoder and
  the captioner's image encoder."""
  stack = layer_stack(EncoderLayer, num_layers=spec.encoder_layers,
                      in_axes=(nn.broadcast, nn.broadcast),
                      remat=spec.remat if remat else "none", name="layers",
                      unroll=spec.encoder_layers if spec.unroll_layers else 1,
                      spec=spec, dtype=dtype, deterministic=deterministic, rope=rope)
  x, _ = stack(x, key_mask, positions)
  return layers.Norm(spec.norm, spec.norm_eps, dtype, name="final_norm")(x)


class TextEncoder(nn.Module):
  spec: ModelSpec
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, text_ids, *, deterministic: bool = True, remat: bool = False):
    """text_ids (B, L) int -> (encoded (B, L, d_model), key_mask (B, L) bool)."""
    s = self.spec
    length = text_ids.shape[1]
    if length > s.text_length:
      raise ValueError(f"text length {length} exceeds config.model.text_length={s.text_length}")
    key_mask = text_ids != s.text_pad_id
    x = layers.Embed(s.text_vocab_padded, s.d_model, ("vocab", "embed"), self.dtype,
                     name="token_embed")(text_ids)
    positions = jnp.arange(length, dtype=jnp.int32)
    if s.text_positions == "learned":
      x = x + layers.Embed(s.text_length, s.d_model, (None, "embed"), self.dtype,
                           name="position_embed")(positions)[None]
    x = nn.Dropout(s.dropout)(x, deterministic=deterministic)
    x = layers.constrain(x, layers.BATCH_LENGTH_EMBED)
    x = encode(s, self.dtype, x, key_mask, positions, deterministic=deterministic, remat=remat,
               rope="1d" if s.text_positions == "rope" else None)
    return x, key_mask
