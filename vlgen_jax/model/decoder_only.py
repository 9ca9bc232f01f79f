"""Decoder-only text-to-image model (LlamaGen / Janus style): one causal stack.

Sequence (L text ids, N = H'*W' image tokens, BOS id = K):
  input   = [c_0 .. c_{L-1}, BOS, t_0 .. t_{N-2}]
  targets =                 [t_0 .. t_{N-1}]      (outputs at L .. L+N-1)
The caption's pad positions are masked as keys, so padding never reaches an
image token; text gets learned 1-D positions, image input i the learned 2-D
position of the token it predicts (as in the encoder-decoder). Layers are the
shared blocks (Attention, MLP, Norm, layer_stack) without cross-attention.

Decode API (the same as vlgen_jax/model/t2i.py, so the AR sampler serves both):
  cache = model.apply(v, text_ids, method="prefill")     # caption K/V, once
  logits, cache = model.apply(v, token, position, cache, method="decode_step")
`position` is the image input index (BOS at 0); the cache holds L + N slots
per layer in the (B, heads, S, kv) layout, one buffer per layer written in
place, and decode runs the layers as an unrolled loop over per-layer
weights, as the encoder-decoder does (vlgen_jax/model/image_decoder.py says
why: a scanned stack copies the whole cache at every token).
Classifier-free guidance runs the empty caption as the prefix.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from vlgen_jax.model import layers
from vlgen_jax.model.attention import Attention, cache_length, write_cache
from vlgen_jax.model.code_embedding import AppearanceCodes
from vlgen_jax.model.image_decoder import (CACHE_AXES, MASKED_LOGIT, constrain_cache, layer_key,
                                           split_layers, unstack_decoder_layers)
from vlgen_jax.model.spec import ModelSpec
from vlgen_jax.model.stack import layer_stack

Cache = dict[str, Any]


class PrefixLayer(nn.Module):
  """Pre-norm block: causal self-attention over valid keys, MLP."""
  spec: ModelSpec
  dtype: Any = jnp.float32
  deterministic: bool = True
  mode: str = "train"

  @nn.compact
  def __call__(self, x, *args):
    s = self.spec
    attn = Attention(s, self.dtype, rope=None, name="self_attention")
    attn_norm = layers.Norm(s.norm, s.norm_eps, self.dtype, name="pre_self_attention_norm")
    mlp_norm = layers.Norm(s.norm, s.norm_eps, self.dtype, name="pre_mlp_norm")
    mlp = layers.MLP(s.d_model, s.mlp_dim, s.mlp, s.dropout, self.deterministic, self.dtype,
                     name="mlp")
    drop = lambda h: nn.Dropout(s.dropout)(h, deterministic=self.deterministic)

    if self.mode in ("train", "prefill"):
      (key_mask,) = args
      h = attn_norm(x)
      k, v = attn.keys_values(h)
      x = x + drop(attn.attend(attn.queries(h), k, v, key_mask=key_mask, causal=True))
      x = x + drop(mlp(mlp_norm(x)))
      x = layers.constrain(x, layers.BATCH_LENGTH_EMBED)
      return x, ((k, v) if self.mode == "prefill" else None)

    if self.mode == "decode":
      cache, key_mask, index = args
      h = attn_norm(x)
      q = attn.queries(h)
      k, v = attn.keys_values(h)
      k_cache = constrain_cache(write_cache(cache["k"], k, index))
      v_cache = constrain_cache(write_cache(cache["v"], v, index))
      length = cache_length(k_cache)
      valid = key_mask[:, :length] & (jnp.arange(length) <= index)[None]
      x = x + attn.attend_cached(q, k_cache, v_cache, valid[:, None, None, :])
      x = x + mlp(mlp_norm(x))
      return x, {"k": k_cache, "v": v_cache}

    raise ValueError(f"unknown decoder-only mode {self.mode!r}")


class PrefixDecoder(nn.Module):
  """Embeddings, the causal stack and the code logits; `mode` as in PrefixLayer."""
  spec: ModelSpec
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, text_ids=None, tokens=None, *, mode: str, cache=None, position=None,
               deterministic: bool = True, remat: bool = False):
    s = self.spec
    # Decode reads the stacked weights per layer (`split_layers`), not through a scan.
    stack = None if mode == "decode" else layer_stack(
        PrefixLayer, num_layers=s.decoder_layers, in_axes=(nn.broadcast,),
        remat=s.remat if (remat and mode == "train") else "none", name="layers",
        unroll=s.decoder_layers if s.unroll_layers else 1, spec=s, dtype=self.dtype,
        deterministic=deterministic, mode=mode)
    text_embed = layers.Embed(s.text_vocab_padded, s.d_model, ("vocab", "embed"), self.dtype,
                              name="text_embed")
    text_positions = layers.Embed(s.text_length, s.d_model, (None, "embed"), self.dtype,
                                  name="text_position_embed")
    image_positions = layers.LearnedPositions2D(s.image_grid, s.d_model, self.dtype,
                                                name="position_embed")
    codes = (AppearanceCodes(s, self.dtype, name="codes") if s.code_embedding == "appearance"
             else None)
    image_embed = codes.embed if codes is not None else layers.Embed(
        s.image_vocab_padded, s.d_model, ("vocab", "embed"), self.dtype, name="token_embed")
    drop = lambda h: nn.Dropout(s.dropout)(h, deterministic=deterministic)

    def embed_text():
      length = text_ids.shape[1]
      x = text_embed(text_ids) + text_positions(jnp.arange(length, dtype=jnp.int32))[None]
      return x, text_ids != s.text_pad_id

    def embed_image(positions):
      return image_embed(tokens) + image_positions(positions)[None]

    def logits_of(x):
      x = layers.Norm(s.norm, s.norm_eps, self.dtype, name="final_norm")(x)
      if codes is not None:
        logits = codes.logits(x)
      else:
        logits = layers.DenseGeneral((s.image_vocab_padded,), ("embed", "vocab"),
                                     dtype=self.dtype, out_dtype=jnp.float32, name="logits")(x)
      logits = jnp.asarray(logits, jnp.float32)
      logits = jnp.where(jnp.arange(s.image_vocab_padded) < s.image_vocab_size, logits,
                         MASKED_LOGIT)
      return layers.constrain(logits, layers.BATCH_LENGTH_VOCAB)

    if mode == "train":
      x_text, text_mask = embed_text()
      x_image = embed_image(jnp.arange(tokens.shape[1], dtype=jnp.int32))
      x = drop(jnp.concatenate([x_text, x_image], axis=1))
      key_mask = jnp.concatenate([text_mask, jnp.ones(tokens.shape, bool)], axis=1)
      x, _ = stack(layers.constrain(x, layers.BATCH_LENGTH_EMBED), key_mask)
      return logits_of(x[:, text_ids.shape[1]:])

    if mode == "prefill":
      x, text_mask = embed_text()
      _, (k, v) = stack(layers.constrain(x, layers.BATCH_LENGTH_EMBED), text_mask)
      # Per layer, the (B, heads, S, kv) cache layout of the encdec decoder,
      # so decode steps write and read it in place.
      batch = text_ids.shape[0]
      pad = [(0, 0), (0, 0), (0, s.num_image_tokens), (0, 0)]
      per_layer = lambda a: tuple(  # noqa: E731
          layers.constrain(jnp.pad(jnp.swapaxes(a[i], 1, 2), pad), CACHE_AXES)
          for i in range(s.decoder_layers))
      key_mask = jnp.concatenate([text_mask, jnp.ones((batch, s.num_image_tokens), bool)], 1)
      return {"self_k": per_layer(k), "self_v": per_layer(v), "key_mask": key_mask}

    # decode: one image input token at image index `position`.
    position = jnp.asarray(position, jnp.int32)
    x = embed_image(position[None])
    index = cache["key_mask"].shape[1] - s.num_image_tokens + position
    weights = split_layers(self.variables["params"]["layers"], s.decoder_layers)
    layer = PrefixLayer(s, self.dtype, mode="decode", parent=None)
    self_k, self_v = [], []
    for i in range(s.decoder_layers):
      x, kv = layer.apply({"params": weights[layer_key(i)]}, x,
                          {"k": cache["self_k"][i], "v": cache["self_v"][i]},
                          cache["key_mask"], index)
      self_k.append(kv["k"])
      self_v.append(kv["v"])
    return logits_of(x), dict(cache, self_k=tuple(self_k), self_v=tuple(self_v))


class DecoderOnlyModel(nn.Module):
  spec: ModelSpec

  def setup(self):
    self.decoder = PrefixDecoder(self.spec, self.spec.compute_dtype())

  def __call__(self, text_ids, image_tokens, train: bool = False):
    """text_ids (B, L), image_tokens (B, N) -> fp32 logits (B, N, V_padded)."""
    bos = jnp.full((image_tokens.shape[0], 1), self.spec.image_bos_id, image_tokens.dtype)
    inputs = jnp.concatenate([bos, image_tokens[:, :-1]], axis=1)
    return self.decoder(text_ids, inputs, mode="train", deterministic=not train, remat=train)

  def prefill(self, text_ids) -> Cache:
    return self.decoder(text_ids, mode="prefill")

  def decode_params(self, params):
    """`params` as decode loops pass them to `decode_step`: the layers split
    once, outside the loop (`unstack_decoder_layers`)."""
    return unstack_decoder_layers(params, self.spec.decoder_layers)

  def decode_step(self, token, position, cache: Cache):
    """token (B,) at image input index `position` -> (fp32 logits (B, V), cache)."""
    logits, cache = self.decoder(tokens=jnp.asarray(token, jnp.int32)[:, None], mode="decode",
                                 cache=cache, position=position)
    return logits[:, 0], cache
