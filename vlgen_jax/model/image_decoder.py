"""Causal transformer decoder over VQ image tokens, cross-attending to the text.

One compact `__call__` with a static `mode`, so every mode builds the same
submodules (same param paths) from one set of weights:
  "train":    full sequence, causal self-attention + cross-attention;
  "cross_kv": per-layer cross-attention keys/values of the encoder output,
              computed once per prompt for decoding;
  "decode":   one token against the static-size self-attention cache.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlgen_jax.model import layers
from vlgen_jax.model.attention import Attention
from vlgen_jax.model.code_embedding import AppearanceCodes
from vlgen_jax.model.spec import ModelSpec
from vlgen_jax.model.stack import layer_stack

# Logit for ids that are not image codes (BOS, vocabulary padding). Finite,
# so guidance arithmetic (cond - uncond) stays finite; exp() of it is 0.
MASKED_LOGIT = -1e9


class DecoderLayer(nn.Module):
  """Pre-norm block: causal self-attention, cross-attention to the encoder
  output (text here; image tokens in the captioner), MLP. `rope` of the
  self-attention: None, "1d" or "2d" (see `Attention`)."""
  spec: ModelSpec
  dtype: Any = jnp.float32
  deterministic: bool = True
  mode: str = "train"
  rope: str | None = None

  @nn.compact
  def __call__(self, x, *args):
    s = self.spec
    self_attn = Attention(s, self.dtype, rope=self.rope, name="self_attention")
    cross_attn = Attention(s, self.dtype, rope=None, name="cross_attention")
    self_norm = layers.Norm(s.norm, s.norm_eps, self.dtype, name="pre_self_attention_norm")
    cross_norm = layers.Norm(s.norm, s.norm_eps, self.dtype, name="pre_cross_attention_norm")
    mlp_norm = layers.Norm(s.norm, s.norm_eps, self.dtype, name="pre_mlp_norm")
    mlp = layers.MLP(s.d_model, s.mlp_dim, s.mlp, s.dropout, self.deterministic, self.dtype,
                     name="mlp")
    drop = lambda h: nn.Dropout(s.dropout)(h, deterministic=self.deterministic)

    if self.mode == "cross_kv":
      # x is the encoder output (carried unchanged); ys are this layer's K/V.
      return x, cross_attn.keys_values(x)

    if self.mode == "train":
      encoded, text_mask, positions = args
      h = self_norm(x)
      h = self_attn.attend(self_attn.queries(h, positions), *self_attn.keys_values(h, positions),
                           causal=True)
      x = x + drop(h)
      h = cross_norm(x)
      h = cross_attn.attend(cross_attn.queries(h), *cross_attn.keys_values(encoded),
                            key_mask=text_mask)
      x = x + drop(h)
      x = x + drop(mlp(mlp_norm(x)))
      return layers.constrain(x, layers.BATCH_LENGTH_EMBED), None

    if self.mode == "decode":
      cache, text_mask, position = args
      positions = position[None]
      h = self_norm(x)
      q = self_attn.queries(h, positions)
      k, v = self_attn.keys_values(h, positions)
      k_cache = jax.lax.dynamic_update_slice_in_dim(cache["k"], k.astype(cache["k"].dtype),
                                                    position, axis=1)
      v_cache = jax.lax.dynamic_update_slice_in_dim(cache["v"], v.astype(cache["v"].dtype),
                                                    position, axis=1)
      valid = jnp.arange(k_cache.shape[1]) <= position
      x = x + self_attn.attend_cached(q, k_cache, v_cache, valid)
      h = cross_norm(x)
      x = x + cross_attn.attend_cached(cross_attn.queries(h), cache["cross_k"], cache["cross_v"],
                                       text_mask)
      x = x + mlp(mlp_norm(x))
      return x, {"k": k_cache, "v": v_cache}

    raise ValueError(f"unknown decoder mode {self.mode!r}")


def decoder_stack(spec: ModelSpec, dtype, *, mode: str, deterministic: bool, remat: bool,
                  rope: str | None) -> nn.Module:
  """The scanned `DecoderLayer`s of a decoder in `mode` (built inside the
  caller's compact `__call__`, named "layers"); shared by the image decoder
  and the captioner's text decoder."""
  in_axes = {"train": (nn.broadcast, nn.broadcast, nn.broadcast),
             "cross_kv": (),
             "decode": (0, nn.broadcast, nn.broadcast)}[mode]
  return layer_stack(DecoderLayer, num_layers=spec.decoder_layers, in_axes=in_axes,
                     remat=spec.remat if (remat and mode == "train") else "none", name="layers",
                     unroll=spec.decoder_layers if (mode == "decode" or spec.unroll_layers) else 1,
                     spec=spec, dtype=dtype, deterministic=deterministic, mode=mode, rope=rope)


def run_decoder_stack(stack, x, *, mode: str, encoded, context_mask, positions, cache,
                      cache_mask: str, position):
  """Train: the full sequence against `encoded`; decode: one step against
  `cache` (its cross-attention key mask under `cache_mask`). Returns (x, new
  cache or None)."""
  if mode == "train":
    x, _ = stack(x, encoded, context_mask, positions)
    return x, None
  per_layer = {"k": cache["self_k"], "v": cache["self_v"],
               "cross_k": cache["cross_k"], "cross_v": cache["cross_v"]}
  x, kv = stack(x, per_layer, cache[cache_mask], position)
  return x, dict(cache, self_k=kv["k"], self_v=kv["v"])


class ImageDecoder(nn.Module):
  spec: ModelSpec
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens, *, mode: str, encoded=None, text_mask=None, cache=None,
               position=None, deterministic: bool = True, remat: bool = False):
    """See the module docstring; returns fp32 logits (B, T, V) or per-layer K/V.

    tokens: (B, T) input ids (BOS = image_vocab_size first); position: the
    sequence index of `tokens[:, 0]` in decode mode (a scalar int32).
    """
    s = self.spec
    stack = decoder_stack(s, self.dtype, mode=mode, deterministic=deterministic, remat=remat,
                          rope="2d" if s.image_positions == "rope_2d" else None)
    if mode == "cross_kv":
      _, (k, v) = stack(encoded)
      return k, v

    length = tokens.shape[1]
    if mode == "train":
      positions = jnp.arange(length, dtype=jnp.int32)
    else:
      position = jnp.asarray(position, jnp.int32)
      positions = position[None]
    codes = (AppearanceCodes(s, self.dtype, name="codes") if s.code_embedding == "appearance"
             else None)
    if codes is not None:
      x = codes.embed(tokens)
    else:
      x = layers.Embed(s.image_vocab_padded, s.d_model, ("vocab", "embed"), self.dtype,
                       name="token_embed")(tokens)
    if s.image_positions == "learned_2d":
      x = x + layers.LearnedPositions2D(s.image_grid, s.d_model, self.dtype,
                                        name="position_embed")(positions)[None]
    x = nn.Dropout(s.dropout)(x, deterministic=deterministic)
    x = layers.constrain(x, layers.BATCH_LENGTH_EMBED)

    x, new_cache = run_decoder_stack(stack, x, mode=mode, encoded=encoded, context_mask=text_mask,
                                     positions=positions, cache=cache, cache_mask="text_mask",
                                     position=position)

    x = layers.Norm(s.norm, s.norm_eps, self.dtype, name="final_norm")(x)
    if codes is not None:
      logits = codes.logits(x)
    else:
      logits = layers.DenseGeneral((s.image_vocab_padded,), ("embed", "vocab"), dtype=self.dtype,
                                   out_dtype=jnp.float32, name="logits")(x)
    logits = jnp.asarray(logits, jnp.float32)
    logits = jnp.where(jnp.arange(s.image_vocab_padded) < s.image_vocab_size, logits,
                       MASKED_LOGIT)
    logits = layers.constrain(logits, layers.BATCH_LENGTH_VOCAB)
    return logits if mode == "train" else (logits, new_cache)
