"""Vector quantizer with l2-normalised low-dimensional codes (LlamaGen recipe).

Encoder features are projected (outside this module) to `code_dim` channels;
here inputs and codes are l2-normalised, each input picks its nearest code
(max cosine similarity), and gradients pass straight through to the encoder.
Low-dimensional normalised codes keep the lookup well conditioned, so far more
of the codebook is used than with raw high-dimensional codes.
All quantizer math runs in float32 whatever the compute dtype.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-6) -> jax.Array:
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=True), eps * eps))


def nearest_code(z: jax.Array, codebook: jax.Array, *, normalized: bool) -> jax.Array:
  """Index of the nearest code for each row of `z` (N, D); ties pick the lowest index.

  With normalised inputs and codes, nearest in l2 is max dot product, which
  avoids forming |z|^2 + |e|^2 (equal for all codes).
  """
  sim = jnp.dot(z, codebook.T, precision=jax.lax.Precision.HIGHEST)
  if not normalized:
    sim = sim - 0.5 * jnp.sum(codebook * codebook, axis=-1)[None, :]
  return jnp.argmax(sim, axis=-1).astype(jnp.int32)


def code_counts(indices: jax.Array, num_codes: int) -> jax.Array:
  """How many times each code was picked (float32, shape (num_codes,))."""
  return jnp.zeros((num_codes,), jnp.float32).at[indices.reshape(-1)].add(1.0)


def perplexity(counts: jax.Array) -> jax.Array:
  """exp(entropy) of the empirical code distribution: the effective number of codes used."""
  p = counts / jnp.maximum(jnp.sum(counts), 1.0)
  return jnp.exp(-jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)))


def entropy_loss(z: jax.Array, codebook: jax.Array, temperature: float) -> jax.Array:
  """Mean per-input entropy of soft assignments minus entropy of their average.

  Minimising it makes each input confident about one code while spreading
  inputs over all codes (as in MaskGIT / LlamaGen).
  """
  logits = jnp.dot(z, codebook.T, precision=jax.lax.Precision.HIGHEST) / temperature
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  probs = jnp.exp(log_probs)
  sample_entropy = -jnp.mean(jnp.sum(probs * log_probs, axis=-1))
  avg_probs = jnp.mean(probs, axis=0)
  avg_entropy = -jnp.sum(avg_probs * jnp.log(avg_probs + 1e-9))
  return sample_entropy - avg_entropy


class VectorQuantizer(nn.Module):
  """Maps (..., code_dim) features to their nearest codes.

  Returns `(z_q, indices, aux)`: `z_q` equals the (normalised) chosen codes in
  the forward pass and has the gradient of the identity w.r.t. the input
  (straight-through); `aux` holds `codebook_loss`, `commit_loss` (already
  times `beta`), `entropy_loss` (unweighted; 0 unless `compute_entropy`),
  and for code restarts `latents` (the normalised inputs, (N, code_dim)) and
  `errors` (their squared distance to the chosen code, (N,)).
  """
  num_codes: int
  code_dim: int
  beta: float = 0.25
  l2_normalize: bool = True
  compute_entropy: bool = False
  entropy_temperature: float = 0.01

  def setup(self):
    def init(rng, shape, dtype=jnp.float32):
      # Normal rows, normalised at use: uniform on the sphere for l2 codes.
      scale = 1.0 if self.l2_normalize else 1.0 / self.num_codes
      return scale * jax.random.normal(rng, shape, dtype)

    self.codebook = self.param(
        "codebook", nn.with_logical_partitioning(init, ("codebook", None)),
        (self.num_codes, self.code_dim), jnp.float32)

  def normalized_codebook(self) -> jax.Array:
    return l2_normalize(self.codebook) if self.l2_normalize else self.codebook

  def lookup(self, indices: jax.Array) -> jax.Array:
    """Codes for integer `indices` (any shape) -> indices.shape + (code_dim,)."""
    return jnp.take(self.normalized_codebook(), indices, axis=0)

  def __call__(self, z: jax.Array) -> tuple[jax.Array, jax.Array, dict[str, Any]]:
    shape = z.shape
    z = z.astype(jnp.float32).reshape(-1, self.code_dim)
    if self.l2_normalize:
      z = l2_normalize(z)
    codebook = self.normalized_codebook()
    indices = nearest_code(jax.lax.stop_gradient(z), jax.lax.stop_gradient(codebook),
                           normalized=self.l2_normalize)
    z_q = jnp.take(codebook, indices, axis=0)
    aux = {
        # Moves codes toward their inputs ...
        "codebook_loss": jnp.mean(jnp.square(jax.lax.stop_gradient(z) - z_q)),
        # ... and keeps the encoder committed to its codes.
        "commit_loss": self.beta * jnp.mean(jnp.square(z - jax.lax.stop_gradient(z_q))),
        "entropy_loss": (entropy_loss(z, codebook, self.entropy_temperature)
                         if self.compute_entropy else jnp.zeros((), jnp.float32)),
        "latents": jax.lax.stop_gradient(z),
        "errors": jax.lax.stop_gradient(jnp.sum(jnp.square(z - z_q), axis=-1)),
    }
    z_st = z + jax.lax.stop_gradient(z_q - z)
    return z_st.reshape(shape), indices.reshape(shape[:-1]), aux
