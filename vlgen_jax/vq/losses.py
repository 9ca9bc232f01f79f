"""Tokenizer losses and image metrics (all float32)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from vlgen_jax.errors import UserError

RECON_LOSSES = ("l1", "l2")


def reconstruction_loss(x_rec: jax.Array, x: jax.Array, kind: str) -> jax.Array:
  """Mean L1 or L2 distance between images of the same shape."""
  diff = x_rec.astype(jnp.float32) - x.astype(jnp.float32)
  if kind == "l1":
    return jnp.mean(jnp.abs(diff))
  if kind == "l2":
    return jnp.mean(jnp.square(diff))
  raise UserError(f"unknown reconstruction loss {kind!r}; expected one of {RECON_LOSSES}")


def psnr(x_rec: jax.Array, x: jax.Array) -> jax.Array:
  """Per-image PSNR in dB of [-1, 1] images, measured on [0, 1] after clipping
  the reconstruction (what a saved image shows). Shape (B,)."""
  a = jnp.clip((x_rec.astype(jnp.float32) + 1) / 2, 0, 1)
  b = (x.astype(jnp.float32) + 1) / 2
  mse = jnp.mean(jnp.square(a - b), axis=tuple(range(1, a.ndim)))
  # An exact reconstruction is capped at 100 dB instead of infinity.
  return -10.0 * jnp.log10(jnp.maximum(mse, 1e-10))


def hinge_d_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
  """Discriminator hinge loss: pushes real logits above +1 and fake below -1."""
  return 0.5 * (jnp.mean(jax.nn.relu(1.0 - logits_real)) + jnp.mean(jax.nn.relu(1.0 + logits_fake)))


def hinge_g_loss(logits_fake: jax.Array) -> jax.Array:
  return -jnp.mean(logits_fake)


def adaptive_weight(rec_grad: jax.Array, gan_grad: jax.Array, max_weight: float = 1e4) -> jax.Array:
  """||d rec / d W_last|| / ||d gan / d W_last|| (VQGAN): balances the GAN term
  against reconstruction at the decoder's last layer. No gradient flows."""
  w = jnp.linalg.norm(rec_grad.reshape(-1)) / (jnp.linalg.norm(gan_grad.reshape(-1)) + 1e-4)
  return jax.lax.stop_gradient(jnp.clip(w, 0.0, max_weight))


def to_uint8(x: jax.Array) -> jax.Array:
  """[-1, 1] float images -> uint8 [0, 255] (rounded, clipped)."""
  return jnp.clip(jnp.round((x.astype(jnp.float32) + 1) * 127.5), 0, 255).astype(jnp.uint8)
