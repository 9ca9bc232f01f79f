"""Train state and the jit-compiled init, train and eval steps.

The train step: per-step RNG = fold_in(base rng, step) (so a resumed run draws
the same numbers), `Task.loss` under `value_and_grad` (wrapped in
`jax.checkpoint` with the config's remat policy unless the model remats its own
layers), gradient accumulation over micro-batches with `lax.scan`, the optax
update, then `Task.post_update`. A step whose loss or gradient norm is not
finite (or whose update is not) leaves the whole state as it was (only
`skipped_steps` grows).
"""
from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from vlgen_jax.train import numerics
from vlgen_jax.train.sharding import BATCH_AXES, unbox

PyTree = Any


@flax.struct.dataclass
class TrainState:
  step: jax.Array           # int32 scalar: updates attempted so far
  params: PyTree            # fp32, unboxed
  opt_state: PyTree
  model_state: PyTree       # Task's non-gradient state, unboxed
  rng: jax.Array            # base key; step keys are fold_in(rng, step)
  skipped_steps: jax.Array  # int32 scalar: non-finite steps dropped

  def to_dict(self) -> dict:
    """Shallow dict for checkpoints (stable item names on disk)."""
    return {f.name: getattr(self, f.name) for f in self.__dataclass_fields__.values()}

  @classmethod
  def from_dict(cls, d: dict) -> "TrainState":
    return cls(**d)


def _to_fp32(tree: PyTree) -> PyTree:
  return jax.tree.map(
      lambda x: x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def make_init_fn(task, tx: optax.GradientTransformation) -> Callable:
  """(seed key, batch) -> (boxed params, boxed model_state, TrainState)."""

  def init(key, batch):
    init_rng, train_rng = jax.random.split(key)
    boxed_params, boxed_model_state = task.init(init_rng, batch)
    params = _to_fp32(unbox(boxed_params))
    model_state = unbox(boxed_model_state)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      model_state=model_state, rng=train_rng,
                      skipped_steps=jnp.zeros((), jnp.int32))

  return init


def _tree_add(a: PyTree, b: PyTree) -> PyTree:
  return jax.tree.map(jnp.add, a, b)


def _fp32_metrics(metrics: dict) -> dict:
  return {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}


def make_train_step(task, tx: optax.GradientTransformation, schedules: dict[str, Callable],
                    config, mesh: jax.sharding.Mesh, param_shardings: PyTree) -> Callable:
  """(TrainState, global batch) -> (TrainState, metrics dict of fp32 scalars)."""
  k = int(config.micro_batches)
  nan_at = int((config.get("debug") or {}).get("nan_at_step", 0))

  def loss_fn(params, model_state, batch, rng):
    loss, (metrics, new_model_state) = task.loss(params, model_state, batch, rng, train=True)
    return loss, (_fp32_metrics(metrics), new_model_state)

  if not getattr(task, "handles_remat", False):
    loss_fn = numerics.maybe_remat(loss_fn, config.remat)
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def accumulate(params, model_state, batch, rng):
    """Mean loss, metrics and grads over `k` micro-batches, threading model_state."""
    if k == 1:
      (loss, (metrics, model_state)), grads = grad_fn(params, model_state, batch, rng)
      return loss, metrics, model_state, grads
    # Micro-batch i takes rows i, i+k, i+2k, ...: each one stays spread over
    # all data-parallel devices, with no resharding of the batch.
    micro = jax.tree.map(
        lambda x: jnp.swapaxes(x.reshape((x.shape[0] // k, k) + x.shape[1:]), 0, 1), batch)
    micro = jax.tree.map(
        lambda x: jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(None, BATCH_AXES))),
        micro)
    first = jax.tree.map(lambda x: x[0], micro)
    _, (metrics_shape, _) = jax.eval_shape(loss_fn, params, model_state, first, rng)
    zeros_grads = jax.lax.with_sharding_constraint(
        jax.tree.map(jnp.zeros_like, params), param_shardings)
    zeros_metrics = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metrics_shape)

    def body(carry, xs):
      grads_sum, loss_sum, metrics_sum, ms = carry
      i, mb = xs
      (loss, (metrics, ms)), grads = grad_fn(params, ms, mb, jax.random.fold_in(rng, i))
      grads_sum = jax.lax.with_sharding_constraint(_tree_add(grads_sum, grads), param_shardings)
      return (grads_sum, loss_sum + loss, _tree_add(metrics_sum, metrics), ms), None

    init = (zeros_grads, jnp.zeros((), jnp.float32), zeros_metrics, model_state)
    (grads, loss, metrics, model_state), _ = jax.lax.scan(body, init, (jnp.arange(k), micro))
    scale = 1.0 / k
    return (loss * scale, jax.tree.map(lambda m: m * scale, metrics), model_state,
            jax.tree.map(lambda g: g * scale, grads))

  def train_step(state: TrainState, batch: dict):
    rng = jax.random.fold_in(state.rng, state.step)
    loss_rng, post_rng = jax.random.split(rng)
    loss, metrics, model_state, grads = accumulate(state.params, state.model_state, batch, loss_rng)
    if nan_at:
      # Fault injection (config.debug.nan_at_step): this step diverges, as a
      # model would whose loss overflowed; only traced when the switch is set.
      poison = jnp.where(state.step + 1 == nan_at, jnp.float32(jnp.nan), jnp.float32(0))
      loss = loss + poison
      grads = jax.tree.map(lambda g: g + poison.astype(g.dtype), grads)
    grad_norm = optax.global_norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    params, model_state = task.post_update(params, model_state, post_rng)
    # The update is checked too (element-wise: its norm could overflow while
    # every element is finite): an optimizer can turn finite grads into NaNs.
    updates_finite = jnp.all(jnp.stack(
        [jnp.all(jnp.isfinite(u)) for u in jax.tree.leaves(updates)] or [jnp.bool_(True)]))
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & updates_finite
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)  # noqa: E731
    new_state = state.replace(
        step=state.step + 1,
        params=keep(params, state.params),
        opt_state=keep(opt_state, state.opt_state),
        model_state=keep(model_state, state.model_state),
        skipped_steps=state.skipped_steps + (~ok).astype(jnp.int32))
    out = dict(metrics)
    out["loss"] = loss.astype(jnp.float32)
    out["grad_norm"] = grad_norm
    out["param_norm"] = optax.global_norm(new_state.params)
    out["nonfinite"] = (~ok).astype(jnp.float32)
    out["skipped_steps"] = new_state.skipped_steps
    for name, schedule in schedules.items():
      out["learning_rate" + (f"/{name}" if name else "")] = schedule(state.step)
    return new_state, out

  return train_step


def make_eval_step(task, seed: int) -> Callable:
  """(params, model_state, global batch) -> metrics dict (loss first) for one batch."""
  key = jax.random.fold_in(jax.random.PRNGKey(seed), 0x5EED)

  def eval_step(params, model_state, batch):
    loss, (metrics, _) = task.loss(params, model_state, batch, key, train=False)
    out = _fp32_metrics(metrics)
    out["loss"] = jnp.asarray(loss, jnp.float32)
    return out

  return eval_step
