"""Token cross-entropy in float32 from integer labels (no one-hot), with z-loss."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def token_cross_entropy(logits, targets, *, z_loss: float = 0.0, mask=None):
  """Mean next-token loss over all positions (or those where `mask` is True).

  logits: (B, N, V) (cast to float32); targets: (B, N) int; mask: (B, N)
  bool or None (every position counts).
  Returns `(loss, metrics)`: loss = ce + z_loss * mean(logsumexp^2) (PaLM's
  z-loss keeps the softmax normaliser near 1); metrics hold loss, ce,
  z_loss, accuracy and bits_per_token (ce in bits).
  """
  logits = jnp.asarray(logits, jnp.float32)
  lse = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  weights = jnp.ones(targets.shape, jnp.float32) if mask is None else mask.astype(jnp.float32)
  count = jnp.maximum(jnp.sum(weights), 1.0)
  mean = lambda x: jnp.sum(x * weights) / count
  ce = mean(lse - target_logit)
  z = z_loss * mean(jnp.square(lse)) if z_loss else jnp.zeros((), jnp.float32)
  loss = ce + z
  accuracy = mean((jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32))
  metrics = {"loss": loss, "ce": ce, "z_loss": z, "accuracy": accuracy,
             "bits_per_token": ce / math.log(2.0)}
  return loss, metrics
