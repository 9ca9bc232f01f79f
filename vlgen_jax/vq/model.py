"""VQGAN-style image tokenizer: conv encoder -> l2 VQ -> conv decoder (pure Linen).

Layout is NHWC. The encoder optionally folds `patch_size` x `patch_size`
pixel patches into channels first (space-to-depth; the decoder ends with the
inverse), which moves all convs off the full resolution: on flat-colored
images the per-pixel output layer still draws exact edges, at a fraction of
the cost. It then has one level per entry of `ch_mult`, with a stride-2
downsampling conv between levels, so the downsampling factor is
patch_size * 2 ** (len(ch_mult) - 1) (4, 8 or 16). An optional
single-head self-attention block runs at the lowest resolution only, where
the token grid is small. The decoder mirrors the encoder with nearest-
neighbour upsampling.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vlgen_jax.errors import UserError
from vlgen_jax.vq.quantizer import VectorQuantizer

Dtype = Any
ACT = ("activation_batch", None, None, "activation_embed")


def _conv(features: int, kernel: int = 3, stride: int = 1, *, dtype: Dtype, name: str | None = None,
          zero_init: bool = False) -> nn.Conv:
  kinit = nn.initializers.zeros if zero_init else nn.initializers.lecun_normal()
  return nn.Conv(
      features, (kernel, kernel), strides=(stride, stride), padding="SAME", dtype=dtype,
      kernel_init=nn.with_logical_partitioning(kinit, (None, None, "conv_in", "conv_out")),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)), name=name)


def _norm(channels: int, groups: int, *, dtype: Dtype, name: str | None = None) -> nn.GroupNorm:
  return nn.GroupNorm(
      num_groups=math.gcd(groups, channels), epsilon=1e-6, dtype=dtype,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)), name=name)


class ResBlock(nn.Module):
  features: int
  groups: int = 8
  dtype: Dtype = jnp.float32
  kernel: int = 3

  @nn.compact
  def __call__(self, x):
    h = nn.swish(_norm(x.shape[-1], self.groups, dtype=self.dtype, name="norm1")(x))
    h = _conv(self.features, self.kernel, dtype=self.dtype, name="conv1")(h)
    h = nn.swish(_norm(self.features, self.groups, dtype=self.dtype, name="norm2")(h))
    # Zero-init last conv: each block starts as the identity, which trains faster.
    h = _conv(self.features, self.kernel, dtype=self.dtype, name="conv2", zero_init=True)(h)
    if x.shape[-1] != self.features:
      x = _conv(self.features, 1, dtype=self.dtype, name="skip")(x)
    return nn.with_logical_constraint(x + h, ACT)


class AttnBlock(nn.Module):
  """Single-head spatial self-attention with a residual connection."""
  groups: int = 8
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, hgt, wid, c = x.shape
    h = _norm(c, self.groups, dtype=self.dtype, name="norm")(x).reshape(b, hgt * wid, c)
    q, k, v = (_dense(c, self.dtype, n)(h) for n in ("q", "k", "v"))
    w = jnp.einsum("bqc,bkc->bqk", q, k) / math.sqrt(c)
    w = jax.nn.softmax(w.astype(jnp.float32), axis=-1).astype(self.dtype)
    h = jnp.einsum("bqk,bkc->bqc", w, v)
    h = _dense(c, self.dtype, "proj", zero_init=True)(h)
    return x + h.reshape(b, hgt, wid, c)


def _dense(features: int, dtype: Dtype, name: str, zero_init: bool = False) -> nn.Dense:
  kinit = nn.initializers.zeros if zero_init else nn.initializers.lecun_normal()
  return nn.Dense(features, dtype=dtype, name=name,
                  kernel_init=nn.with_logical_partitioning(kinit, ("embed", "mlp")),
                  bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)))


def space_to_depth(x, p: int):
  """(B, H, W, C) -> (B, H/p, W/p, p*p*C): each p x p patch becomes one position."""
  if p == 1:
    return x
  b, h, w, c = x.shape
  x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h // p, w // p, p * p * c)


def depth_to_space(x, p: int):
  """Inverse of `space_to_depth`."""
  if p == 1:
    return x
  b, h, w, c = x.shape
  x = x.reshape(b, h, w, p, p, c // (p * p)).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h * p, w * p, c // (p * p))


def _upsample(x):
  b, h, w, c = x.shape
  return jax.image.resize(x, (b, 2 * h, 2 * w, c), method="nearest")


def _mid(h, num_blocks: int, attn: bool, groups: int, dtype: Dtype, kernel: int = 3):
  """Lowest-resolution blocks: ResBlocks with the attention block (if any) in
  the middle. Called inside a compact module, so names are its children."""
  for i in range(num_blocks):
    if attn and i == num_blocks // 2:
      h = AttnBlock(groups, dtype, name="mid_attn")(h)
    h = ResBlock(h.shape[-1], groups, dtype, kernel, name=f"mid_res{i}")(h)
  if attn and num_blocks == 0:
    h = AttnBlock(groups, dtype, name="mid_attn")(h)
  return h


class Encoder(nn.Module):
  ch: int
  ch_mult: Sequence[int]
  num_res_blocks: int
  z_channels: int
  attn: bool = False
  groups: int = 8
  patch_size: int = 1
  dtype: Dtype = jnp.float32
  # 3: the usual 3x3 convs (3x3 stride-2 downsampling). 1: every token sees
  # only its own patch (1x1 convs, 2x2 stride-2 downsampling).
  kernel: int = 3
  num_mid_blocks: int = 2

  @nn.compact
  def __call__(self, x):
    k = self.kernel
    x = space_to_depth(x.astype(self.dtype), self.patch_size)
    x = nn.with_logical_constraint(x, ACT)
    h = _conv(self.ch * self.ch_mult[0], k, dtype=self.dtype, name="conv_in")(x)
    for level, mult in enumerate(self.ch_mult):
      for i in range(self.num_res_blocks):
        h = ResBlock(self.ch * mult, self.groups, self.dtype, k, name=f"down{level}_res{i}")(h)
      if level < len(self.ch_mult) - 1:
        h = _conv(h.shape[-1], 3 if k == 3 else 2, 2, dtype=self.dtype, name=f"down{level}_down")(h)
    h = _mid(h, self.num_mid_blocks, self.attn, self.groups, self.dtype, k)
    h = nn.swish(_norm(h.shape[-1], self.groups, dtype=self.dtype, name="norm_out")(h))
    return _conv(self.z_channels, k, dtype=self.dtype, name="conv_out")(h)


class Decoder(nn.Module):
  """Mirror of `Encoder`, up to the activations before the final RGB conv
  (`VQModel.to_rgb`; the adaptive GAN weight needs gradients w.r.t. that layer)."""
  ch: int
  ch_mult: Sequence[int]
  num_res_blocks: int
  attn: bool = False
  groups: int = 8
  dtype: Dtype = jnp.float32
  num_mid_blocks: int = 2

  @nn.compact
  def __call__(self, z):
    top = self.ch * self.ch_mult[-1]
    h = _conv(top, dtype=self.dtype, name="conv_in")(z.astype(self.dtype))
    h = _mid(h, self.num_mid_blocks, self.attn, self.groups, self.dtype)
    for level in reversed(range(len(self.ch_mult))):
      for i in range(self.num_res_blocks + 1):
        h = ResBlock(self.ch * self.ch_mult[level], self.groups, self.dtype,
                     name=f"up{level}_res{i}")(h)
      if level > 0:
        h = _conv(h.shape[-1], dtype=self.dtype, name=f"up{level}_up")(_upsample(h))
    return nn.swish(_norm(h.shape[-1], self.groups, dtype=self.dtype, name="norm_out")(h))


@dataclasses.dataclass(frozen=True)
class VQConfig:
  """Architecture hyper-parameters (config.model of a vq config)."""
  ch: int = 64
  ch_mult: tuple[int, ...] = (1, 1, 2, 2)
  num_res_blocks: int = 1
  z_channels: int = 64
  attn: bool = False
  norm_groups: int = 8
  patch_size: int = 1
  encoder_kernel: int = 3
  num_mid_blocks: int = 2
  num_codes: int = 512
  code_dim: int = 8
  l2_normalize: bool = True
  beta: float = 0.25
  entropy_temperature: float = 0.01

  @property
  def factor(self) -> int:
    return self.patch_size * 2 ** (len(self.ch_mult) - 1)

  @classmethod
  def from_config(cls, model: ml_collections.ConfigDict | dict) -> "VQConfig":
    fields = {f.name for f in dataclasses.fields(cls)}
    given = dict(model.to_dict() if hasattr(model, "to_dict") else model)
    unknown = sorted(set(given) - fields)
    if unknown:
      raise UserError(f"unknown config.model fields for the vq model: {', '.join(unknown)}")
    if "ch_mult" in given:
      given["ch_mult"] = tuple(int(m) for m in given["ch_mult"])
    cfg = cls(**given)
    if not cfg.ch_mult or cfg.patch_size not in (1, 2, 4, 8, 16):
      raise UserError("config.model.ch_mult must not be empty and patch_size must be 1, 2, 4, 8 "
                      f"or 16, got {cfg.ch_mult} and {cfg.patch_size}")
    if cfg.encoder_kernel not in (1, 3):
      raise UserError(f"config.model.encoder_kernel must be 1 or 3, got {cfg.encoder_kernel}")
    if cfg.factor not in (4, 8, 16):
      raise UserError(f"config.model: downsampling factor patch_size * 2**(len(ch_mult) - 1) "
                      f"must be 4, 8 or 16, got {cfg.factor}")
    if cfg.num_res_blocks < 0 or cfg.num_mid_blocks < 0:
      raise UserError("config.model.num_res_blocks and num_mid_blocks must be >= 0")
    if cfg.num_codes < 2 or cfg.code_dim < 1:
      raise UserError("config.model.num_codes must be >= 2 and code_dim >= 1")
    return cfg


class VQModel(nn.Module):
  """encode: images [-1,1] (B,H,W,3) -> (z_q straight-through, indices (B,h,w), aux);
  decode: z_q -> images; decode_indices: indices -> images."""
  config: VQConfig
  compute_entropy: bool = False
  dtype: Dtype = jnp.float32

  def setup(self):
    c = self.config
    self.encoder = Encoder(c.ch, c.ch_mult, c.num_res_blocks, c.z_channels, c.attn,
                           c.norm_groups, c.patch_size, self.dtype, c.encoder_kernel,
                           c.num_mid_blocks)
    # 1x1 projections into and out of the low-dimensional code space.
    self.quant_conv = _conv(c.code_dim, 1, dtype=jnp.float32)
    self.quantizer = VectorQuantizer(c.num_codes, c.code_dim, c.beta, c.l2_normalize,
                                     self.compute_entropy, c.entropy_temperature)
    self.post_quant_conv = _conv(c.z_channels, 1, dtype=self.dtype)
    self.decoder = Decoder(c.ch, c.ch_mult, c.num_res_blocks, c.attn, c.norm_groups, self.dtype,
                           c.num_mid_blocks)
    self.to_rgb = _conv(3 * c.patch_size ** 2, dtype=self.dtype)

  def encode(self, x):
    z = self.quant_conv(self.encoder(x).astype(jnp.float32))
    return self.quantizer(z)

  def decode_features(self, z_q):
    return self.decoder(self.post_quant_conv(z_q))

  def to_pixels(self, features):
    return depth_to_space(self.to_rgb(features), self.config.patch_size).astype(jnp.float32)

  def decode(self, z_q):
    return self.to_pixels(self.decode_features(z_q))

  def decode_indices(self, indices):
    return self.decode(self.quantizer.lookup(indices))

  def __call__(self, x):
    z_q, indices, aux = self.encode(x)
    return self.decode(z_q), indices, aux
