"""Codebook health: usage over a rolling window, and dead-code restart.

Codebook collapse (most inputs mapping to a few codes while the rest never
win a nearest-neighbour lookup, so never move) is the classic VQ failure.
The state below tracks, per code, the step it was last picked and the step it
was last (re)started; a code nobody picked for `dead_after` steps is restarted
at a recent encoder output, where inputs actually are, so it can win again.

State (all arrays, kept in the Task's `model_state`):
  step:         int32 ()     steps counted by `update` (one per training batch)
  last_used:    int32 (K,)   last step the code was picked (NEVER if not yet)
  last_restart: int32 (K,)   last step the code was initialised or restarted
  recent:       f32  (R, D)  latest batch's normalised latents, sampled by quantization error
  restarts:     int32 ()     codes restarted so far (kept by the caller of restart_dead_codes)
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

NEVER = -(2 ** 30)
STATE_AXES = {
    "step": (),
    "last_used": ("codebook",),
    "last_restart": ("codebook",),
    "recent": (None, None),
    "restarts": (),
}


def init_state(num_codes: int, code_dim: int, num_recent: int) -> dict[str, jax.Array]:
  return {
      "step": jnp.zeros((), jnp.int32),
      "last_used": jnp.full((num_codes,), NEVER, jnp.int32),
      "last_restart": jnp.zeros((num_codes,), jnp.int32),
      "recent": jnp.zeros((num_recent, code_dim), jnp.float32),
      "restarts": jnp.zeros((), jnp.int32),
  }


def box_state(state: dict[str, jax.Array]) -> dict:
  """Adds logical axis names so the trainer can shard the state like params."""
  return {k: nn.LogicallyPartitioned(v, STATE_AXES[k]) if STATE_AXES[k] else v
          for k, v in state.items()}


def update(state: dict[str, jax.Array], indices: jax.Array, latents: jax.Array,
           errors: jax.Array, rng: jax.Array) -> dict[str, jax.Array]:
  """Records the codes picked by one training batch and samples its latents.

  The sample is drawn without replacement with probability proportional to
  each latent's quantization error (Gumbel top-k): latents the codebook
  already covers well (e.g. the flat background that fills most images)
  would waste restarts, latents far from every code are where a new code wins.
  """
  step = state["step"]
  num_codes = state["last_used"].shape[0]
  used = jnp.zeros((num_codes,), jnp.bool_).at[indices.reshape(-1)].set(True)
  latents = latents.reshape(-1, latents.shape[-1])
  errors = errors.reshape(-1).astype(jnp.float32)
  num_recent = state["recent"].shape[0]
  gumbel = jax.random.gumbel(rng, errors.shape)
  keys = jnp.log(errors + 1e-12) + gumbel
  if num_recent <= latents.shape[0]:
    _, pick = jax.lax.top_k(keys, num_recent)
  else:  # fewer latents than slots: take all, then repeat in key order
    order = jnp.argsort(-keys)
    pick = order[jnp.arange(num_recent) % latents.shape[0]]
  return {
      **state,
      "step": step + 1,
      "last_used": jnp.where(used, step, state["last_used"]),
      "recent": jnp.take(latents, pick, axis=0).astype(jnp.float32),
  }


def usage(state: dict[str, jax.Array], window: int) -> jax.Array:
  """Fraction of codes picked at least once in the last `window` counted steps."""
  last_step = state["step"] - 1
  return jnp.mean((last_step - state["last_used"] < window).astype(jnp.float32))


def dead_codes(state: dict[str, jax.Array], dead_after: int) -> jax.Array:
  """Codes neither picked nor restarted within the last `dead_after` steps."""
  last_step = state["step"] - 1
  alive_since = jnp.maximum(state["last_used"], state["last_restart"])
  return last_step - alive_since >= dead_after


def restart_dead_codes(codebook: jax.Array, state: dict[str, jax.Array], rng: jax.Array, *,
                       dead_after: int, noise: float = 0.0
                       ) -> tuple[jax.Array, dict[str, jax.Array], jax.Array]:
  """Moves dead codes onto distinct random recent latents.

  Returns `(codebook, state, number restarted)`. Restarted codes get a fresh
  grace period of `dead_after` steps; `usage` still counts only real picks.
  """
  num_codes, dim = codebook.shape
  num_recent = state["recent"].shape[0]
  dead = dead_codes(state, dead_after)
  key_perm, key_noise = jax.random.split(rng)
  # Distinct samples per code where the sample allows it.
  reps = -(-num_codes // num_recent)
  order = jnp.concatenate([jax.random.permutation(jax.random.fold_in(key_perm, i), num_recent)
                           for i in range(reps)])[:num_codes]
  fresh = jnp.take(state["recent"], order, axis=0)
  if noise > 0:
    fresh = fresh + noise * jax.random.normal(key_noise, fresh.shape)
  # Scale to the existing codes' norm (irrelevant with l2 codes, needed without).
  scale = jnp.sqrt(jnp.mean(jnp.sum(codebook * codebook, axis=-1)))
  fresh = fresh * (scale / jnp.maximum(jnp.sqrt(jnp.mean(jnp.sum(fresh * fresh, -1))), 1e-6))
  # `recent` is all zeros before the first update; never restart onto it.
  dead = dead & (jnp.sum(jnp.abs(state["recent"])) > 0)
  new_codebook = jnp.where(dead[:, None], fresh.astype(codebook.dtype), codebook)
  new_state = dict(state)
  new_state["last_restart"] = jnp.where(dead, state["step"] - 1, state["last_restart"])
  return new_codebook, new_state, jnp.sum(dead.astype(jnp.int32))
