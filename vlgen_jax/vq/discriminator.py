"""PatchGAN discriminator (pix2pix / VQGAN): a grid of real/fake logits, one per
overlapping patch. GroupNorm instead of BatchNorm keeps it stateless, so the
discriminator is a pure function of its params like the rest of the model."""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp


class PatchDiscriminator(nn.Module):
  ch: int = 64
  num_layers: int = 3
  groups: int = 8
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    def conv(features, stride, name):
      return nn.Conv(
          features, (4, 4), strides=(stride, stride), padding=((1, 1), (1, 1)), dtype=self.dtype,
          kernel_init=nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                   (None, None, "conv_in", "conv_out")),
          bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)), name=name)

    def norm(features, name):
      return nn.GroupNorm(
          num_groups=math.gcd(self.groups, features), dtype=self.dtype, name=name,
          scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
          bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)))

    h = nn.leaky_relu(conv(self.ch, 2, "conv0")(x.astype(self.dtype)), 0.2)
    features = self.ch
    for i in range(1, self.num_layers + 1):
      features = self.ch * min(2 ** i, 8)
      stride = 2 if i < self.num_layers else 1
      h = nn.leaky_relu(norm(features, f"norm{i}")(conv(features, stride, f"conv{i}")(h)), 0.2)
    return conv(1, 1, "conv_out")(h).astype(jnp.float32)
