"""Image-code embeddings and output logits tied to what each VQ code looks like.

With a learned table (`code_embedding="learned"`) every VQ code is an atom:
the model only knows a code through the captions it followed in training. On
`shapes`, where green is never a triangle in training, the codes of a green
slanted edge only ever followed "green circle"/"green square", so "a green
triangle" gets a green circle (held-out pair fidelity 0.155 for the full
recipe).

`AppearanceCodes` (`code_embedding="appearance"`) gives each code an input
embedding and an output vector that are *linear maps of its pixels*: a frozen
`code_features` param holds the mean training-image patch of every code
(written by `vlgen encode`, token_records.APPEARANCE_FILE), and two trained
projections map it to d_model. A logit is then linear in the code's pixels, so evidence composes:
"green" raises every code with green pixels, "triangle" every code with a
slanted edge, and their sum is highest for the green slanted edge even though
no training target ever had it after "green triangle" (docs/recipes.md).
Codes that look alike share logits up to a bias: the VQ's near-duplicate
codes (e.g. several all-black ones) split their probability, so the model's
cross-entropy on exact token ids is higher than a learned table's while the
decoded images are as good. Mean patches, not the VQ decoder's rendering of a
uniform grid of one code: the latter put specks into backgrounds on shapes
(count accuracy 0.2).

The features are set by the task at init from the token dataset
(`TextToImageTask.init`) and never trained (`Task.frozen_params`, plus a
stop_gradient here so they take no part in gradient clipping either).

`DecodedCodes` (`code_embedding="decoded"`, the captioner's image encoder
only) goes one step further: a position is embedded through *its own* p x p
patch of the VQ decoder's rendering of the whole grid, not through the mean
patch of its code. A code means different pixels in different neighbourhoods
(the VQ decoder reads a 3x3 context), and a scene the VQ never saw in
training is drawn with codes whose mean patches belong to other scenes: on
shapes, a yellow square's codes average to jagged pieces of yellow circles
and triangles, while the decoder still draws a square from them. The reader
then sees what the detector and a person see. The VQ's decoding half is a
frozen part of the params (`frozen_vq`, set from the VQ run at init).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlgen_jax.model import layers
from vlgen_jax.model.spec import ModelSpec
from vlgen_jax.vq.model import VQConfig, VQModel, space_to_depth

FEATURES = "code_features"  # param name, also how `frozen_params` finds it
FROZEN_VQ = "frozen_vq"     # submodule name of `DecodedCodes`' VQ

# Logits are (x . W f) * scale: x is RMS-normalised (|x| ~ sqrt(d)) and W f has
# unit-scale entries at init, so 1/sqrt(d) keeps them O(1); 4 lets a trained
# model reach confident logits without large projections (tried on shapes).
LOGIT_SCALE = 4.0


class AppearanceCodes(nn.Module):
  """`embed(tokens)` -> (..., d) and `logits(x)` -> fp32 (..., V_padded).

  `with_logits=False` (the captioner's image encoder only embeds codes)
  creates no output params."""
  spec: ModelSpec
  dtype: Any = jnp.float32
  with_logits: bool = True

  def setup(self):
    s = self.spec
    self.code_features = self.param(
        FEATURES, nn.with_logical_partitioning(nn.initializers.zeros, (None, None)),
        (s.image_vocab_size, s.code_feature_dim), jnp.float32)
    self.embed_proj = layers.DenseGeneral((s.d_model,), (None, "embed"), dtype=self.dtype,
                                          name="embed_proj")
    if self.with_logits:
      self.logit_proj = layers.DenseGeneral((s.d_model,), (None, "embed"), dtype=self.dtype,
                                            name="logit_proj")
    # BOS and vocabulary padding have no appearance: plain learned rows.
    self.special_embed = self.param(
        "special_embed", nn.with_logical_partitioning(nn.initializers.normal(1.0), (None, "embed")),
        (s.image_vocab_padded - s.image_vocab_size, s.d_model), jnp.float32)
    if self.with_logits:
      self.logit_bias = self.param(
          "logit_bias", nn.with_logical_partitioning(nn.initializers.zeros, (None,)),
          (s.image_vocab_size,), jnp.float32)

  def _features(self):
    f = jax.lax.stop_gradient(self.code_features)
    # Centred, so the projections see what distinguishes codes, not the mean.
    return f - jnp.mean(f, axis=0, keepdims=True)

  def embed(self, tokens):
    table = jnp.concatenate([self.embed_proj(self._features()),
                             jnp.asarray(self.special_embed, self.dtype)])
    return jnp.take(table, tokens, axis=0)

  def logits(self, x):
    s = self.spec
    w = self.logit_proj(self._features())  # (K, d)
    logits = jnp.einsum("...d,kd->...k", jnp.asarray(x, self.dtype), w,
                        preferred_element_type=jnp.float32)
    logits = logits * (LOGIT_SCALE / s.d_model ** 0.5) + self.logit_bias
    pad = [(0, 0)] * (logits.ndim - 1) + [(0, s.image_vocab_padded - s.image_vocab_size)]
    return jnp.pad(logits, pad)  # the decoder masks the non-code ids


class DecodedCodes(nn.Module):
  """`embed(tokens)` (B, N) -> (B, N, d): each position's patch of the VQ
  decoder's rendering of the grid, in [0, 1], projected to d_model. Ids >=
  image_vocab_size (the "no image" input) get learned rows."""
  spec: ModelSpec
  vq: VQConfig
  dtype: Any = jnp.float32

  def setup(self):
    s = self.spec
    self.frozen_vq = VQModel(self.vq, dtype=self.dtype, name=FROZEN_VQ)
    self.embed_proj = layers.DenseGeneral((s.d_model,), (None, "embed"), dtype=self.dtype,
                                          name="embed_proj")
    self.special_embed = self.param(
        "special_embed", nn.with_logical_partitioning(nn.initializers.normal(1.0), (None, "embed")),
        (s.image_vocab_padded - s.image_vocab_size, s.d_model), jnp.float32)

  def embed(self, tokens):
    s, p = self.spec, self.vq.factor
    h, w = s.image_grid
    codes = jnp.clip(tokens, 0, s.image_vocab_size - 1).reshape(-1, h, w)
    pixels = jax.lax.stop_gradient(self.frozen_vq.decode_indices(codes))  # [-1, 1]
    patches = space_to_depth(pixels, p).reshape(tokens.shape[0], h * w, p * p * 3)
    x = self.embed_proj(jnp.asarray((jnp.clip(patches, -1, 1) + 1) / 2, self.dtype))
    special = jnp.take(jnp.asarray(self.special_embed, self.dtype),
                       jnp.maximum(tokens - s.image_vocab_size, 0), axis=0)
    return jnp.where((tokens >= s.image_vocab_size)[..., None], special, x)


def _is_features(path) -> bool:
  return any(getattr(k, "key", None) == FEATURES for k in path)


def _is_frozen(path) -> bool:
  return any(getattr(k, "key", None) in (FEATURES, FROZEN_VQ) for k in path)


def set_features(params, features):
  """`params` (boxed or not) with every `code_features` leaf set to `features`."""
  def put(path, leaf):
    if not _is_features(path):
      return leaf
    if isinstance(leaf, nn.Partitioned):
      return leaf.replace_boxed(jnp.asarray(features, leaf.value.dtype))
    return jnp.asarray(features, leaf.dtype)
  return jax.tree_util.tree_map_with_path(put, params,
                                          is_leaf=lambda x: isinstance(x, nn.Partitioned))


def features_mask(params):
  """True for the frozen leaves (`code_features`, `frozen_vq`), like `params`."""
  return jax.tree_util.tree_map_with_path(lambda path, _: _is_frozen(path), params)


def set_frozen_vq(params, vq_params):
  """`params` (boxed or not) with every leaf under `frozen_vq` taken from a VQ
  run's params (`params["vq"]` of its checkpoint) at the same relative path."""
  def put(path, leaf):
    keys = [getattr(k, "key", None) for k in path]
    if FROZEN_VQ not in keys:
      return leaf
    source = vq_params
    for k in keys[keys.index(FROZEN_VQ) + 1:]:
      source = source[k]
    source = source.value if isinstance(source, nn.Partitioned) else source
    target = leaf.value if isinstance(leaf, nn.Partitioned) else leaf
    if tuple(source.shape) != tuple(target.shape):
      raise ValueError(f"VQ param {'/'.join(map(str, keys))}: {source.shape} vs {target.shape}")
    value = jnp.asarray(source, target.dtype)
    return leaf.replace_boxed(value) if isinstance(leaf, nn.Partitioned) else value
  return jax.tree_util.tree_map_with_path(put, params,
                                          is_leaf=lambda x: isinstance(x, nn.Partitioned))
