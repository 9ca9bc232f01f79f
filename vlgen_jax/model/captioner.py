"""The captioning model: the text-to-image encoder-decoder with roles swapped.

A bidirectional transformer encodes the image's VQ tokens (learned 2-D
positions over the token grid, or 2-D RoPE); a causal transformer over
SentencePiece ids cross-attends to it and predicts the next id. Both reuse
the t2i blocks (`EncoderLayer`, `DecoderLayer`, the scanned stack), and the
same `ModelSpec`: `encoder_layers` is the image encoder's depth,
`decoder_layers` the text decoder's.

Text sequence convention (L = text_length ids, `BOS piece... EOS PAD...`):
  decoder input = ids[:, :-1]  (starts with BOS)
  targets       = ids[:, 1:]   (PAD targets are not scored)
so the decoder has L-1 positions. Logits of ids that are never predicted
(PAD, BOS, vocabulary padding) are masked.

The "no image" input (caption dropout in training; the caption prior
p(c | no image) of PMI scoring) holds NULL_ID = image_vocab_size (the
image decoder's BOS slot) at every grid position: the encoder then sees only
positions, the same for every example.

Decode API (like `vlgen_jax.model.t2i.Model`):
  encoded, image_mask = model.apply(v, image_tokens, method=Model.encode_image)
  cache = model.apply(v, encoded, image_mask, method=Model.init_cache)
  logits, cache = model.apply(v, token, position, cache, method=Model.decode_step)
`token` (B,) is the decoder input at sequence index `position` (BOS at 0).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from vlgen_jax.model import layers
from vlgen_jax.model.code_embedding import AppearanceCodes, DecodedCodes
from vlgen_jax.model.image_decoder import (CACHE_AXES, MASKED_LOGIT, apply_layers,
                                           cross_kv_cache, decoder_stack,
                                           unstack_decoder_layers)
from vlgen_jax.model.spec import ModelSpec
from vlgen_jax.model.text_encoder import encode
from vlgen_jax.text.tokenizer import BOS_ID
from vlgen_jax.vq.model import VQConfig

Cache = dict[str, Any]


def null_image_id(spec: ModelSpec) -> int:
  return spec.image_bos_id


def null_images(spec: ModelSpec, batch: int):
  """The "no image" input (B, N): NULL_ID everywhere."""
  return jnp.full((batch, spec.num_image_tokens), null_image_id(spec), jnp.int32)


class ImageEncoder(nn.Module):
  """Bidirectional transformer over the N = H'*W' codes of an image. `vq`:
  the VQ's architecture, for `code_embedding="decoded"` only."""
  spec: ModelSpec
  dtype: Any = jnp.float32
  vq: VQConfig | None = None

  @nn.compact
  def __call__(self, image_tokens, *, deterministic: bool = True, remat: bool = False):
    """image_tokens (B, N) int -> (encoded (B, N, d_model), key_mask (B, N) bool)."""
    s = self.spec
    if image_tokens.shape[1] != s.num_image_tokens:
      raise ValueError(f"{image_tokens.shape[1]} image tokens, the model expects "
                       f"{s.num_image_tokens} ({s.image_grid[0]}x{s.image_grid[1]})")
    if s.code_embedding == "appearance":
      x = AppearanceCodes(s, self.dtype, with_logits=False, name="codes").embed(image_tokens)
    elif s.code_embedding == "decoded":
      if self.vq is None:
        raise ValueError("code_embedding='decoded' needs the VQ's architecture (Model.vq)")
      x = DecodedCodes(s, self.vq, self.dtype, name="codes").embed(image_tokens)
    else:
      x = layers.Embed(s.image_vocab_padded, s.d_model, ("vocab", "embed"), self.dtype,
                       name="token_embed")(image_tokens)
    positions = jnp.arange(s.num_image_tokens, dtype=jnp.int32)
    if s.image_positions == "learned_2d":
      x = x + layers.LearnedPositions2D(s.image_grid, s.d_model, self.dtype,
                                        name="position_embed")(positions)[None]
    x = nn.Dropout(s.dropout)(x, deterministic=deterministic)
    x = layers.constrain(x, layers.BATCH_LENGTH_EMBED)
    # Every code is a valid key (the "no image" input too: its keys are its positions).
    key_mask = jnp.ones(image_tokens.shape, bool)
    x = encode(s, self.dtype, x, key_mask, positions, deterministic=deterministic, remat=remat,
               rope="2d" if s.image_positions == "rope_2d" else None)
    return x, key_mask


class TextDecoder(nn.Module):
  """Causal transformer over caption ids cross-attending to the image
  (modes "train", "cross_kv", "decode" as in `ImageDecoder`)."""
  spec: ModelSpec
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens, *, mode: str, encoded=None, image_mask=None, cache=None,
               position=None, deterministic: bool = True, remat: bool = False):
    s = self.spec
    rope = "1d" if s.text_positions == "rope" else None
    stack = decoder_stack(s, self.dtype, mode=mode, deterministic=deterministic, remat=remat,
                          rope=rope)
    if mode == "cross_kv":
      return cross_kv_cache(stack, encoded, s.decoder_layers)
    if mode == "train":
      positions = jnp.arange(tokens.shape[1], dtype=jnp.int32)
    else:
      position = jnp.asarray(position, jnp.int32)
      positions = position[None]
    x = layers.Embed(s.text_vocab_padded, s.d_model, ("vocab", "embed"), self.dtype,
                     name="token_embed")(tokens)
    if s.text_positions == "learned":
      x = x + layers.Embed(s.text_length, s.d_model, (None, "embed"), self.dtype,
                           name="position_embed")(positions)[None]
    x = nn.Dropout(s.dropout)(x, deterministic=deterministic)
    x = layers.constrain(x, layers.BATCH_LENGTH_EMBED)
    x, new_cache = apply_layers(self, stack, x, positions, mode=mode, encoded=encoded,
                                context_mask=image_mask, cache=cache, position=position,
                                mask_key="image_mask", rope=rope)
    x = layers.Norm(s.norm, s.norm_eps, self.dtype, name="final_norm")(x)
    logits = layers.DenseGeneral((s.text_vocab_padded,), ("embed", "vocab"), dtype=self.dtype,
                                 out_dtype=jnp.float32, name="logits")(x)
    ids = jnp.arange(s.text_vocab_padded)
    never = (ids >= s.text_vocab_size) | (ids == s.text_pad_id) | (ids == BOS_ID)
    logits = jnp.where(never, MASKED_LOGIT, jnp.asarray(logits, jnp.float32))
    logits = layers.constrain(logits, layers.BATCH_LENGTH_VOCAB)
    return logits if mode == "train" else (logits, new_cache)


class Model(nn.Module):
  spec: ModelSpec
  vq: VQConfig | None = None  # the VQ's architecture, for code_embedding="decoded"

  def setup(self):
    dtype = self.spec.compute_dtype()
    self.encoder = ImageEncoder(self.spec, dtype, self.vq)
    self.decoder = TextDecoder(self.spec, dtype)

  def __call__(self, image_tokens, text_ids, train: bool = False):
    """image_tokens (B, N), text_ids (B, L) -> fp32 logits (B, L-1, V_padded)
    predicting text_ids[:, 1:]."""
    encoded, image_mask = self.encoder(image_tokens, deterministic=not train, remat=train)
    return self.decoder(text_ids[:, :-1], mode="train", encoded=encoded, image_mask=image_mask,
                        deterministic=not train, remat=train)

  def caption_logits(self, encoded, image_mask, text_ids):
    """Teacher-forced logits (B, L-1, V) of text_ids (B, L) given an encoded
    image (scoring many captions of one image encodes it once)."""
    return self.decoder(text_ids[:, :-1], mode="train", encoded=encoded, image_mask=image_mask)

  def encode_image(self, image_tokens):
    """image_tokens (B, N) -> (encoded (B, N, d), image_mask (B, N) bool)."""
    return self.encoder(image_tokens, deterministic=True)

  def init_cache(self, encoded, image_mask) -> Cache:
    """Static-size decode cache (L-1 positions); cross-attention K/V computed once."""
    s = self.spec
    cross_k, cross_v = self.decoder(None, mode="cross_kv", encoded=encoded)
    # One (B, heads, L-1, kv) buffer per layer, as in the image decoder.
    shape = (encoded.shape[0], s.num_heads, decode_length(s), s.head_dim)
    empty = lambda: tuple(layers.constrain(jnp.zeros(shape, cross_k[0].dtype), CACHE_AXES)  # noqa: E731
                          for _ in range(s.decoder_layers))
    return {"self_k": empty(), "self_v": empty(), "cross_k": cross_k, "cross_v": cross_v,
            "image_mask": image_mask}

  def decode_params(self, params):
    """`params` as decode loops pass them to `decode_step`: the decoder's
    layers split once, outside the loop (`unstack_decoder_layers`)."""
    return unstack_decoder_layers(params, self.spec.decoder_layers)

  def decode_step(self, token, position, cache: Cache):
    """token (B,) int at sequence index `position` (scalar) -> (fp32 logits (B, V), cache)."""
    logits, cache = self.decoder(jnp.asarray(token, jnp.int32)[:, None], mode="decode",
                                 cache=cache, position=position)
    return logits[:, 0], cache


def decode_length(spec: ModelSpec) -> int:
  """Decoder positions: BOS + up to L-2 pieces, the last of which may be EOS."""
  return spec.text_length - 1
