"""Causal transformer decoder over VQ image tokens, cross-attending to the text.

One compact `__call__` with a static `mode`, so every mode builds the same
submodules (same param paths) from one set of weights:
  "train":    full sequence, causal self-attention + cross-attention
              (bidirectional for the masked family: every token sees all);
  "cross_kv": per-layer cross-attention keys/values of the encoder output,
              computed once per prompt for decoding;
  "decode":   T tokens (T = 1 for plain decoding, a draft window for
              Jacobi decoding) at consecutive positions from `start` (a
              scalar, or (B,) per row), against the static-size cache.

Decode runs the layers as an unrolled loop over the stacked params (one
token's step is tiny, a loop per step costs more than the layers) with one
cache buffer per layer, (B, heads, S, kv), written in place
(`attention.write_cache`). Scanning the layers instead means slicing a
stacked cache per layer and restacking it, i.e. copying every layer's whole
cache every token, which made a token's cost grow with batch.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlgen_jax.model import layers
from vlgen_jax.model.attention import Attention, cache_length, to_cache_layout, write_cache
from vlgen_jax.model.code_embedding import AppearanceCodes
from vlgen_jax.model.spec import ModelSpec
from vlgen_jax.model.stack import layer_stack

# Logical names of a layer's K/V cache (sharding rules map them).
CACHE_AXES = ("cache_batch", "cache_heads", "cache_length", "cache_kv")

# Logit for ids that are not image codes (BOS, vocabulary padding). Finite,
# so guidance arithmetic (cond - uncond) stays finite; exp() of it is 0.
MASKED_LOGIT = -1e9


def constrain_cache(cache):
  """A layer's K or V cache (one buffer, or a tuple of chunks) constrained to
  `CACHE_AXES`, each buffer alike."""
  return jax.tree.map(lambda c: layers.constrain(c, CACHE_AXES), cache)


class DecoderLayer(nn.Module):
  """Pre-norm block: causal self-attention, cross-attention to text, MLP."""
  spec: ModelSpec
  dtype: Any = jnp.float32
  deterministic: bool = True
  mode: str = "train"
  rope: str | None = None  # "2d" for image positions, "1d" for text, None

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
                           causal=s.family != "masked")
      x = x + drop(h)
      h = cross_norm(x)
      h = cross_attn.attend(cross_attn.queries(h), *cross_attn.keys_values(encoded),
                            key_mask=text_mask)
      x = x + drop(h)
      x = x + drop(mlp(mlp_norm(x)))
      return layers.constrain(x, layers.BATCH_LENGTH_EMBED), None

    if self.mode == "decode":
      k_cache, v_cache, cross_k, cross_v, text_mask, positions, start = args
      h = self_norm(x)
      q = self_attn.queries(h, positions)
      k, v = self_attn.keys_values(h, positions)
      k_cache = constrain_cache(write_cache(k_cache, k, start))
      v_cache = constrain_cache(write_cache(v_cache, v, start))
      # Each query sees the keys at positions <= its own (earlier tokens and
      # its own window's prefix); later cache slots are stale or empty.
      valid = jnp.arange(cache_length(k_cache)) <= positions[..., None]
      mask = valid[None, None] if valid.ndim == 2 else valid[:, None]
      x = x + self_attn.attend_cached(q, k_cache, v_cache, mask)
      h = cross_norm(x)
      x = x + cross_attn.attend_cached(cross_attn.queries(h), cross_k, cross_v,
                                       text_mask[:, None, None, :])
      x = x + mlp(mlp_norm(x))
      return x, k_cache, v_cache

    raise ValueError(f"unknown decoder mode {self.mode!r}")


def decoder_stack(spec: ModelSpec, dtype, *, mode: str, deterministic: bool, remat: bool,
                  rope: str | None) -> nn.Module | None:
  """The scanned `DecoderLayer`s ("layers") of a decoder in mode "train" or
  "cross_kv"; None in "decode" (`decode_layers` runs them unrolled). Built
  inside the caller's compact `__call__`; shared by the image decoder and the
  captioner's text decoder."""
  if mode == "decode":
    return None
  in_axes = (nn.broadcast,) * 3 if mode == "train" else ()
  return layer_stack(DecoderLayer, num_layers=spec.decoder_layers, in_axes=in_axes,
                     remat=spec.remat if (remat and mode == "train") else "none", name="layers",
                     unroll=spec.decoder_layers if spec.unroll_layers else 1, spec=spec,
                     dtype=dtype, deterministic=deterministic, mode=mode, rope=rope)


def cross_kv_cache(stack, encoded, num_layers: int):
  """Per-layer cross-attention K/V of `encoded`, each a (B, heads, S, kv)
  buffer like the self-attention cache."""
  _, (k, v) = stack(encoded)
  return tuple(tuple(layers.constrain(to_cache_layout(a[i]), CACHE_AXES)
                     for i in range(num_layers)) for a in (k, v))


def layer_key(i: int) -> str:
  """The key of layer i in split decoder params (`split_layers`)."""
  return f"layer_{i}"


def unstack_decoder_layers(params, num_layers: int):
  """Model params with the decoder's stacked "layers" (`params["decoder"]`)
  split into one tree per layer, {"layer_0": ..., ...}, which `decode_layers`
  reads as they are. Decode loops call this once, outside the loop: slicing a
  stacked weight inside the loop body makes XLA:CPU copy every layer's
  weights at every token (32 weight-sized copies per step for 4 layers;
  docs/sampling.md has the measured cost)."""
  decoder = dict(params["decoder"], layers=split_layers(params["decoder"]["layers"], num_layers))
  return dict(params, decoder=decoder)


def split_layers(layer_params, num_layers: int):
  """{"layer_i": layer i's params} from stacked "layers" params (as they are
  if already split). Decode paths of every causal family read their layers
  through it."""
  if layer_key(0) in layer_params:
    return layer_params
  stacked = jax.tree.map(lambda a: a.value if isinstance(a, nn.meta.AxisMetadata) else a,
                         layer_params, is_leaf=lambda a: isinstance(a, nn.meta.AxisMetadata))
  return {layer_key(i): jax.tree.map(lambda a: a[i], stacked)  # noqa: B023
          for i in range(num_layers)}


def decode_layers(module: nn.Module, x, cache, context_mask, positions, start, *,
                  rope: str | None):
  """The decoder layers of `module` on a decode window: its scanned "layers"
  params sliced per layer (same weights as the scan), or already split by
  `unstack_decoder_layers`; each layer owns its cache buffers, written in
  place. Returns (x, self_k, self_v)."""
  layer_params = split_layers(module.variables["params"]["layers"], module.spec.decoder_layers)
  layer = DecoderLayer(module.spec, module.dtype, mode="decode", rope=rope, parent=None)
  self_k, self_v = [], []
  for i in range(module.spec.decoder_layers):
    params = layer_params[layer_key(i)]
    x, k, v = layer.apply({"params": params}, x, cache["self_k"][i], cache["self_v"][i],
                          cache["cross_k"][i], cache["cross_v"][i], context_mask,
                          positions, start)
    self_k.append(k)
    self_v.append(v)
  return x, tuple(self_k), tuple(self_v)


def apply_layers(module: nn.Module, stack, x, positions, *, mode: str, encoded, context_mask,
                 cache, position, mask_key: str, rope: str | None):
  """The decoder layers of a decoder module in either mode: "train" scans
  `stack` over the whole sequence (context: `encoded`, `context_mask`);
  "decode" runs `decode_layers` on the window, reading the context from
  `cache` (its mask under `mask_key`) and writing the window's K/V into it.
  Returns (x, the updated cache, or None in training)."""
  if mode == "train":
    x, _ = stack(x, encoded, context_mask, positions)
    return x, None
  x, self_k, self_v = decode_layers(module, x, cache, cache[mask_key], positions, position,
                                    rope=rope)
  return x, dict(cache, self_k=self_k, self_v=self_v)


class ImageDecoder(nn.Module):
  spec: ModelSpec
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens, *, mode: str, encoded=None, text_mask=None, cache=None,
               position=None, deterministic: bool = True, remat: bool = False):
    """See the module docstring; returns fp32 logits (B, T, V) or per-layer K/V.

    tokens: (B, T) input ids (BOS = image_vocab_size first); position: the
    sequence index of `tokens[:, 0]` in decode mode (a scalar int32, or (B,)
    per row; the window must fit: position + T <= num_image_tokens).
    """
    s = self.spec
    rope = "2d" if s.image_positions == "rope_2d" else None
    stack = decoder_stack(s, self.dtype, mode=mode, deterministic=deterministic, remat=remat,
                          rope=rope)
    if mode == "cross_kv":
      return cross_kv_cache(stack, encoded, s.decoder_layers)

    length = tokens.shape[1]
    if mode == "train":
      positions = jnp.arange(length, dtype=jnp.int32)
    else:
      position = jnp.asarray(position, jnp.int32)
      offsets = jnp.arange(length, dtype=jnp.int32)
      positions = position + offsets if position.ndim == 0 else position[:, None] + offsets
    codes = (AppearanceCodes(s, self.dtype, name="codes") if s.code_embedding == "appearance"
             else None)
    if codes is not None:
      x = codes.embed(tokens)
    else:
      x = layers.Embed(s.image_vocab_padded, s.d_model, ("vocab", "embed"), self.dtype,
                       name="token_embed")(tokens)
    if s.image_positions == "learned_2d":
      pos_emb = layers.LearnedPositions2D(s.image_grid, s.d_model, self.dtype,
                                          name="position_embed")(positions)
      x = x + (pos_emb[None] if positions.ndim == 1 else pos_emb)
    x = nn.Dropout(s.dropout)(x, deterministic=deterministic)
    x = layers.constrain(x, layers.BATCH_LENGTH_EMBED)

    x, new_cache = apply_layers(self, stack, x, positions, mode=mode, encoded=encoded,
                                context_mask=text_mask, cache=cache, position=position,
                                mask_key="text_mask", rope=rope)

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
