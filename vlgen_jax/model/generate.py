"""Autoregressive image-token generation on the decode API (jit-friendly).

`generate` encodes the prompts once, builds the static-size cache (cross-
attention K/V computed once) and runs `decode_step` under `lax.scan` over
the N image positions. Classifier-free guidance runs the conditional and
unconditional (empty-caption) rows as one batch of 2B and mixes the logits
as `uncond + scale * (cond - uncond)`; masked ids (BOS, padding) stay masked.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from vlgen_jax.model.t2i import Model


def pick_tokens(logits, rng, *, temperature: float = 1.0, top_k: int = 0):
  """Greedy for temperature 0; else samples from softmax(logits / T) over the top k."""
  if temperature == 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits / temperature
  if top_k:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def generate(model: Model, params, text_ids, rng=None, *, temperature: float = 0.0,
             top_k: int = 0, guidance_scale: float = 1.0, empty_caption=None):
  """text_ids (B, L) -> image tokens (B, N) int32.

  `guidance_scale` 1.0 is plain conditional decoding; other values need
  `empty_caption` (L,) ids (see `vlgen_jax.model.task.empty_caption_ids`).
  Wrap in `jax.jit` with the keyword arguments static (functools.partial).
  """
  spec = model.spec
  variables = {"params": params}
  batch = text_ids.shape[0]
  guided = guidance_scale != 1.0
  if guided:
    if empty_caption is None:
      raise ValueError("classifier-free guidance needs empty_caption")
    empty = jnp.broadcast_to(jnp.asarray(np.asarray(empty_caption)[:text_ids.shape[1]],
                                         text_ids.dtype), text_ids.shape)
    text_ids = jnp.concatenate([text_ids, empty], axis=0)
  if rng is None:
    rng = jax.random.key(0)
  encoded, text_mask = model.apply(variables, text_ids, method=Model.encode_text)
  cache = model.apply(variables, encoded, text_mask, method=Model.init_cache)

  def step(carry, position):
    token, cache, rng = carry
    inputs = jnp.concatenate([token, token]) if guided else token
    logits, cache = model.apply(variables, inputs, position, cache, method=Model.decode_step)
    if guided:
      cond, uncond = logits[:batch], logits[batch:]
      logits = uncond + guidance_scale * (cond - uncond)
    rng, sub = jax.random.split(rng)
    nxt = pick_tokens(logits, sub, temperature=temperature, top_k=top_k)
    return (nxt, cache, rng), nxt

  bos = jnp.full((batch,), spec.image_bos_id, jnp.int32)
  positions = jnp.arange(spec.num_image_tokens, dtype=jnp.int32)
  _, tokens = jax.lax.scan(step, (bos, cache, rng), positions)
  return tokens.T
