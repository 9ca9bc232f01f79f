"""Iterative parallel decoding of the masked family (MaskGIT, Chang et al. 2022).

Start from all [MASK] (or, for editing, from the kept tokens with the rest
masked). Each of `options.steps` steps predicts every position at once, draws
a token for each masked one, and keeps the most confident draws: after step
t (ratio r = (t+1)/steps) only floor(n0 * schedule(r)) of the n0 initially
masked tokens stay masked (cosine: cos(pi/2 r), MaskGIT's default; linear:
1 - r, which with steps = N unmasks exactly one token per step). Which
draws are kept is randomised as in MaskGIT's `mask_by_random_topk`:
confidence = log p(drawn token) + T_c * (1 - r) * Gumbel noise, so the
choice temperature T_c anneals to 0. The final step fills every remaining
position. Guidance mixes conditional and empty-caption logits and the
plausibility floor restricts draws exactly as in AR sampling
(vlgen_jax/sample/sampler.py); the guidance schedule runs over steps.

Randomness is per image (image i uses fold_in(key_i, step)), so an image does
not depend on its batch.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from vlgen_jax.errors import UserError
from vlgen_jax.sample import sampler as ar


def mask_ratio(schedule: str, ratio):
  """Fraction of the initially masked tokens still masked at `ratio` in [0, 1]."""
  if schedule == "cosine":
    return jnp.cos(math.pi / 2 * ratio)
  return 1.0 - ratio


def tokens_left_masked(unknown, initially_unknown, ratio, schedule: str):
  """How many tokens stay masked after a step (MaskGIT's mask_len): at least one
  is unmasked and at least one stays masked while two or more are masked."""
  # +1e-4: products that are integers in exact arithmetic floor to themselves.
  target = jnp.floor(initially_unknown * mask_ratio(schedule, ratio) + 1e-4)
  return jnp.maximum(1, jnp.minimum(unknown - 1, target)).astype(jnp.int32)


def mask_by_random_topk(keys, mask_len, confidence, temperature):
  """True for the `mask_len` (B,) least confident of confidence (B, N) after
  adding `temperature` * Gumbel noise (one key per row)."""
  noise = jax.vmap(lambda k: jax.random.gumbel(k, confidence.shape[1:]))(keys)
  noisy = confidence + temperature * noise
  cut_off = jnp.take_along_axis(jnp.sort(noisy, axis=-1), mask_len[:, None], axis=-1)
  return noisy < cut_off


def draw(logits, keys, options):
  """logits (B, N, V) -> (tokens (B, N), log p of each drawn token) under the
  distribution actually drawn from (temperature, top-k/top-p applied)."""
  if options.temperature == 0.0:
    tokens = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
  else:
    logits = ar.filter_logits(logits / options.temperature, top_k=options.top_k,
                              top_p=options.top_p)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    tokens = ar.draw_categorical(keys, jnp.exp(log_probs))
  return tokens, jnp.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0]


def sample_tokens(model, params, text_ids, keys, *, options, empty_caption=None, known=None,
                  keep=None, force_guidance: bool = False):
  """text_ids (B, L), keys (B,) -> image tokens (B, N) in `options.steps` steps.

  With `known`/`keep` (B, N), kept tokens are given and never re-predicted;
  every other position is regenerated seeing all of them (native inpainting).
  """
  spec = model.spec
  batch, num_tokens, steps = text_ids.shape[0], spec.num_image_tokens, int(options.steps)
  if steps > num_tokens:
    raise UserError(f"--steps {steps} is more than the {num_tokens} image tokens")
  guided = options.guided or force_guidance
  text_ids = ar.guided_text_ids(text_ids, empty_caption, guided)
  variables = {"params": params}
  encoded, text_mask = model.apply(variables, text_ids, method="encode_text")
  tokens = jnp.full((batch, num_tokens), spec.mask_id, jnp.int32)
  if keep is not None:
    tokens = jnp.where(keep, known, tokens)
  initially_unknown = jnp.sum(tokens == spec.mask_id, axis=-1)

  def step(tokens, t):
    inputs = jnp.concatenate([tokens, tokens]) if guided else tokens
    logits = model.apply(variables, encoded, text_mask, inputs, method="predict")
    logits = ar.next_token_logits(logits, batch, guided, options, t, steps)
    step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, t)
    sample_keys, choice_keys = jnp.moveaxis(jax.vmap(jax.random.split)(step_keys), 1, 0)
    drawn, log_p = draw(logits, sample_keys, options)
    unknown = tokens == spec.mask_id
    drawn = jnp.where(unknown, drawn, tokens)
    ratio = (t + 1) / steps
    mask_len = tokens_left_masked(jnp.sum(unknown, axis=-1), initially_unknown, ratio,
                                  options.mask_schedule)
    confidence = jnp.where(unknown, log_p, jnp.inf)
    remask = mask_by_random_topk(choice_keys, mask_len, confidence,
                                 options.choice_temperature * (1.0 - ratio))
    return jnp.where(remask, spec.mask_id, drawn), drawn

  _, drawn = jax.lax.scan(step, tokens, jnp.arange(steps, dtype=jnp.int32))
  return drawn[-1]  # the last step draws every position still masked
