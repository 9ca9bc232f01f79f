"""Codebook health: usage tracking, restart mechanics, and recovery from collapse."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vlgen_jax.shapes import scenes
from vlgen_jax.vq import codebook as cb
from vlgen_jax.vq.defaults import vq_config
from vlgen_jax.tasks.vq import VQTask


def test_update_tracks_use_and_samples_high_error_latents():
  state = cb.init_state(num_codes=6, code_dim=2, num_recent=3)
  latents = jnp.arange(10 * 2, dtype=jnp.float32).reshape(10, 2)
  errors = jnp.array([0, 0, 0, 0, 1, 0, 2, 0, 3, 0], jnp.float32)
  state = cb.update(state, jnp.array([1, 1, 4]), latents, errors, jax.random.PRNGKey(0))
  assert int(state["step"]) == 1
  np.testing.assert_array_equal(state["last_used"], [cb.NEVER, 0, cb.NEVER, cb.NEVER, 0, cb.NEVER])
  np.testing.assert_allclose(cb.usage(state, window=5), 2 / 6)
  # Only the three latents with nonzero quantization error are candidates.
  assert sorted(np.asarray(state["recent"])[:, 0].tolist()) == [8.0, 12.0, 16.0]
  for _ in range(5):
    state = cb.update(state, jnp.array([2]), latents, errors, jax.random.PRNGKey(1))
  # Codes 1 and 4 were last used 5 counted steps ago: outside a 5-step window.
  np.testing.assert_allclose(cb.usage(state, window=5), 1 / 6)
  np.testing.assert_allclose(cb.usage(state, window=6), 3 / 6)


def test_restart_moves_only_dead_codes_onto_recent_latents():
  state = cb.init_state(num_codes=4, code_dim=2, num_recent=4)
  recent = jnp.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
  codes = jnp.array([[0.6, 0.8]] * 4)
  # Restarting needs a sample of real latents first.
  same, _, n = cb.restart_dead_codes(codes, state, jax.random.PRNGKey(0), dead_after=1)
  assert int(n) == 0 and np.array_equal(same, codes)
  for step in range(3):
    state = cb.update(state, jnp.array([0, 2]), recent, jnp.ones(4), jax.random.PRNGKey(step))
  new, state2, n = cb.restart_dead_codes(codes, state, jax.random.PRNGKey(3), dead_after=2)
  assert int(n) == 2
  np.testing.assert_array_equal(new[jnp.array([0, 2])], codes[jnp.array([0, 2])])
  moved = np.asarray(new[jnp.array([1, 3])])
  assert len({tuple(r) for r in moved}) == 2  # distinct samples
  for row in moved:
    assert any(np.allclose(row, r) for r in np.asarray(recent))
  np.testing.assert_array_equal(state2["last_restart"], [0, 2, 0, 2])
  # A restarted code gets a fresh grace period; used codes were never dead.
  _, _, n = cb.restart_dead_codes(new, state2, jax.random.PRNGKey(4), dead_after=2)
  assert int(n) == 0
  assert float(cb.usage(state2, window=10)) == 0.5  # restarts are not counted as use


def _tiny_task(restart: bool) -> VQTask:
  c = vq_config()
  c.model.update(dict(ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=8, norm_groups=4,
                      num_codes=64, code_dim=4))
  c.data.resolution = 32
  c.codebook.update(dict(restart=restart, dead_after=2, num_recent=256, usage_window=3))
  return VQTask(c)


def _train_from_collapsed_codebook(task: VQTask, steps: int) -> list[float]:
  images = np.stack([scenes.render(scenes.sample_scene("train", i), 32) for i in range(8 * steps)])
  images = images.astype(np.float32) / 127.5 - 1.0
  params, state = task.init(jax.random.PRNGKey(0), {"image": jnp.asarray(images[:8])})
  params, state = nn.meta.unbox(params), nn.meta.unbox(state)
  # Collapse: every code is the same vector, so code 0 wins every lookup.
  codes = params["vq"]["quantizer"]["codebook"]
  params["vq"]["quantizer"]["codebook"] = jnp.broadcast_to(codes[:1], codes.shape)
  tx = optax.adam(1e-3)
  opt = tx.init(params)

  @jax.jit
  def step(params, opt, state, batch, rng):
    k1, k2 = jax.random.split(rng)
    grads, (metrics, state) = jax.grad(
        lambda p: task.loss(p, state, batch, k1, train=True), has_aux=True)(params)
    updates, opt = tx.update(grads, opt, params)
    params, state = task.post_update(optax.apply_updates(params, updates), state, k2)
    return params, opt, state, metrics["codebook_usage"]

  usage = []
  for i in range(steps):
    batch = {"image": jnp.asarray(images[8 * i:8 * (i + 1)])}
    params, opt, state, u = step(params, opt, state, batch, jax.random.PRNGKey(i))
    usage.append(float(u))
  return usage


def test_dead_code_restart_recovers_a_collapsed_codebook():
  steps = 6
  without = _train_from_collapsed_codebook(_tiny_task(restart=False), steps)
  with_restart = _train_from_collapsed_codebook(_tiny_task(restart=True), steps)
  print("usage without restarts", without, "with", with_restart)
  # Both start collapsed: all lookups tie and pick code 0.
  assert without[0] == with_restart[0] == 1 / 64
  # Without restarts, a code separates only when code 0 drifts far enough
  # that ties fall to the next identical code: at most one new code a step.
  assert max(without) <= 4 / 64
  # With them, dead codes move onto poorly-quantized latents and start winning.
  assert with_restart[-1] >= 0.5, with_restart
