"""The model-agnostic trainer: `train(config, workdir)`.

Reads top to bottom: checks -> mesh -> input -> model & optimizer -> shardings
-> checkpoint (resume) -> update step -> evals -> loop. A `Task` (see
task.py) supplies the model, loss and input; everything else lives here.
"""
from __future__ import annotations

import contextlib
import os
import signal
import time
from typing import Sequence

import jax
import jax.numpy as jnp

from vlgen_jax import locks
from vlgen_jax.train import checkpoint as ckpt_lib
from vlgen_jax.train import mesh as mesh_lib
from vlgen_jax.train import metrics as metrics_lib
from vlgen_jax.train import sharding as shd
from vlgen_jax.train import step as step_lib
from vlgen_jax.train import validation
from vlgen_jax.train.optimizer import make_optimizer
from vlgen_jax.train.preemption import StopSignals
from vlgen_jax.tasks import build_task


class NonFiniteError(RuntimeError):
  """Raised under nan_policy=halt when a step's loss or gradient norm is not
  finite, and under either policy when every step of a run was."""


def _all_skipped(first: int, last: int, workdir) -> str:
  return (f"every step ({first}..{last}) had a non-finite loss or gradients and was skipped: "
          f"nothing was trained and nothing exported to {workdir}/export; check the config "
          "(e.g. lower optimizer.learning_rate) and start a new --workdir")


def abstract_train_state(task, config, mesh, rules, key, example_abstract):
  """Shapes and shardings of the TrainState, without compiling anything:
  `(abstract_state, state_shardings, init_fn, tx, schedules)`."""
  boxed_params, boxed_model_state = jax.eval_shape(task.init, key, example_abstract)
  abstract_params = shd.unbox(boxed_params)
  tx, schedules = make_optimizer(config, task.optimizer_labels(abstract_params),
                                 task.frozen_params(abstract_params))
  init_fn = step_lib.make_init_fn(task, tx)
  abstract_state = jax.eval_shape(init_fn, key, example_abstract)
  replicated = shd.replicated(mesh)
  param_shardings = shd.logical_to_shardings(shd.logical_specs(boxed_params), mesh, rules)
  state_shardings = step_lib.TrainState(
      step=replicated, params=param_shardings,
      opt_state=shd.mirror_shardings(abstract_state.opt_state, abstract_state.params,
                                     param_shardings, mesh),
      model_state=shd.logical_to_shardings(shd.logical_specs(boxed_model_state), mesh, rules),
      rng=replicated, skipped_steps=replicated)
  return abstract_state, state_shardings, init_fn, tx, schedules


def train(config, workdir: str, *, devices: Sequence[jax.Device] | None = None
          ) -> step_lib.TrainState:
  """Trains `config` in `workdir` (resuming from its latest checkpoint) and
  returns the final state. Stops early, after saving, on SIGTERM/SIGINT.
  Holds the workdir's lock (vlgen_jax/locks.py) throughout: a second run on
  the same workdir is a UserError naming this one."""
  # ---- checks (before anything compiles) ----------------------------------------
  validation.check_config(config)
  locks.check_dir_arg(workdir, "--workdir")
  # Only process 0 locks: all processes of one run share the workdir.
  with locks.workdir_lock(workdir) if jax.process_index() == 0 else contextlib.nullcontext():
    return _train(config, workdir, devices)


def _train(config, workdir, devices):
  task = build_task(config)

  # ---- mesh ----------------------------------------------------------------------
  mesh = mesh_lib.create_mesh(config, devices)
  rules = shd.logical_axis_rules(config)
  validation.check_batch(config, data_parallel=mesh_lib.data_parallel_size(mesh))
  batch_size = int(config.batch_size)
  eval_batch_size = int(config.eval_batch_size) or batch_size
  primary = jax.process_index() == 0

  # ---- input ---------------------------------------------------------------------
  shard_index, shard_count, local_batch = shd.process_data_shard(mesh, batch_size)
  train_iter = task.input_iterator(
      config.train_split, batch_size=local_batch, train=True, seed=int(config.seed),
      process_index=shard_index, process_count=shard_count)
  if not (hasattr(train_iter, "get_state") and hasattr(train_iter, "set_state")):
    raise TypeError(f"{type(task).__name__}.input_iterator(train=True) must return a Grain "
                    "DatasetIterator (get_state/set_state) so checkpoints can restore it")
  # Peek at one batch for shapes, then rewind so no data is skipped.
  start_position = train_iter.get_state()
  example = next(train_iter)
  train_iter.set_state(start_position)

  def eval_iterator():
    index, count, local = shd.process_data_shard(mesh, eval_batch_size)
    return task.input_iterator(config.eval_split, batch_size=local, train=False,
                               seed=int(config.seed), process_index=index, process_count=count)

  if int(config.eval_every) > 0:
    eval_iterator()  # A missing eval split fails here, not after hours of training.

  with shd.mesh_context(mesh, rules):
    # ---- model & optimizer ---------------------------------------------------------
    # Shapes only until every check has passed: nothing compiles before that.
    key = jax.eval_shape(jax.random.PRNGKey, int(config.seed))
    example_abstract = shd.abstract_batch(example, mesh, batch_size)
    # ---- shardings -----------------------------------------------------------------
    abstract_state, state_shardings, init_fn, tx, schedules = abstract_train_state(
        task, config, mesh, rules, key, example_abstract)
    param_shardings, model_state_shardings = state_shardings.params, state_shardings.model_state
    replicated = shd.replicated(mesh)
    shd.check_divisible(abstract_state.params, param_shardings, "param")
    shd.check_divisible(abstract_state.model_state, model_state_shardings, "model state")
    batch_sharding = shd.batch_sharding(mesh)

    # ---- checkpoint: resume or init --------------------------------------------------
    checkpointer = ckpt_lib.Checkpointer(
        workdir, max_to_keep=int(config.max_to_keep), async_save=bool(config.async_checkpointing),
        slow_save_seconds=float(config.debug.get("slow_save_seconds", 0.0)))
    # The newest checkpoint that reads back cleanly; one whose shapes differ
    # from the config's is an error before anything compiles.
    restored_step, state = checkpointer.restore_latest(
        shd.with_shardings(abstract_state, state_shardings), train_iter)
    if restored_step is None:
      # Fine-tuning: only the params come from the other run (checked
      # against the config's shapes before anything compiles); the optimizer
      # state built from fresh params is the same zeros either way.
      init_params = (ckpt_lib.load_init_params(config.init_from, abstract_state.params,
                                               param_shardings)
                     if config.init_from else None)
      example_batch = shd.global_batch(example, mesh, batch_size)
      key = jax.random.PRNGKey(int(config.seed))
      state = jax.jit(init_fn, out_shardings=state_shardings)(key, example_batch)
      if init_params is not None:
        state = state.replace(params=init_params)
    start = int(jax.device_get(state.step))
    # Only now: a config rejected above must not enter the run's record.
    changed = ckpt_lib.record_config(workdir, config, start)

    # ---- update step -----------------------------------------------------------------
    train_step = jax.jit(
        step_lib.make_train_step(task, tx, schedules, config, mesh, param_shardings),
        in_shardings=(state_shardings, batch_sharding),
        out_shardings=(state_shardings, replicated), donate_argnums=0)

    # ---- evals -----------------------------------------------------------------------
    eval_step = jax.jit(step_lib.make_eval_step(task, int(config.seed)),
                        in_shardings=(param_shardings, model_state_shardings, batch_sharding),
                        out_shardings=replicated)
    writer = metrics_lib.MetricWriter(workdir, enabled=primary, total_steps=int(config.total_steps),
                                      initial_step=start)
    if changed:
      writer.text(f"config differs from the run's first one ({workdir}/config.json) in: {changed}; "
                  f"each start's config is in {workdir}/{ckpt_lib.CONFIG_HISTORY}/")

    def run_eval(step: int, state) -> None:
      totals, count = None, 0
      it = eval_iterator()
      for _ in range(int(config.eval_steps)):
        try:
          local = next(it)
        except StopIteration:
          break
        out = eval_step(state.params, state.model_state,
                        shd.global_batch(local, mesh, eval_batch_size))
        totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
        count += 1
      scalars = {}
      if count:
        scalars = {f"eval/{k}": float(v) / count for k, v in jax.device_get(totals).items()}
      scalars.update(task.evaluate(state.params, state.model_state, step, writer) or {})
      writer.write(step, scalars)

    # ---- loop ------------------------------------------------------------------------
    try:
      state = _loop(config, workdir, task, mesh, state, start, train_iter, train_step, run_eval,
                    checkpointer, writer)
    finally:
      checkpointer.wait()
      checkpointer.close()
      writer.close()
  return state


def _loop(config, workdir, task, mesh, state, start, train_iter, train_step, run_eval,
          checkpointer, writer):
  total = int(config.total_steps)
  batch_size = int(config.batch_size)
  log_every, eval_every = int(config.log_every), int(config.eval_every)
  ckpt_every = int(config.checkpoint_every)
  halt_on_nonfinite = config.nan_policy == "halt"
  sigterm_after = int(config.debug.get("sigterm_after_step", 0))
  perf_args = dict(
      examples_per_step=batch_size, tokens_per_example=int(task.tokens_per_example()),
      flops_per_example=float(task.flops_per_example()), num_devices=mesh.devices.size,
      peak=metrics_lib.peak_flops(mesh.devices.flat[0]))
  multi_process = jax.process_count() > 1
  if start >= total:
    writer.text(f"step {start} >= total_steps {total}: nothing to train")
    if start and int(jax.device_get(state.skipped_steps)) == start:
      raise NonFiniteError(_all_skipped(1, start, workdir))
    if ckpt_lib.export_step(workdir) != start:  # e.g. stopped between the last save and export
      ckpt_lib.export(workdir, start, state.params, state.model_state, config, task.export_files())
    return state

  writer.text(f"training steps {start + 1}..{total} on {mesh.devices.size} devices "
              f"mesh {dict(mesh.shape)}" + (f", resumed from step {start}" if start else
                                            f", params from {config.init_from}"
                                            if config.init_from else ""))
  skipped_before = int(jax.device_get(state.skipped_steps))
  timer_start, timed_steps = time.perf_counter(), 0
  step = start
  with StopSignals() as signals:
    for step in range(start + 1, total + 1):
      batch = shd.global_batch(next(train_iter), mesh, batch_size)
      state, metrics = train_step(state, batch)
      writer.advance()
      if step == start + 1:
        # Keep compilation out of the throughput numbers.
        jax.block_until_ready(state.step)
        timer_start, timed_steps = time.perf_counter(), 0
      else:
        timed_steps += 1
      if step == sigterm_after:
        os.kill(os.getpid(), signal.SIGTERM)

      is_log = step % log_every == 0 or step == total
      is_ckpt = (ckpt_every > 0 and step % ckpt_every == 0) or step == total
      # Multi-process runs agree on stopping only at steps that sync anyway.
      stop = signals.agree() if (is_log or is_ckpt or not multi_process) else False

      if is_log or stop:
        values = jax.device_get(metrics)
        scalars = {f"train/{k}": v for k, v in values.items()}
        if timed_steps:
          now = time.perf_counter()
          scalars.update(metrics_lib.perf_metrics(steps=timed_steps, seconds=now - timer_start,
                                                  **perf_args))
          timer_start, timed_steps = now, 0
        scalars.update({f"data/{k}": v for k, v in task.data_stats().items()})
        writer.write(step, scalars)
      if halt_on_nonfinite and (is_log or is_ckpt or stop):
        # Checked before saving: no checkpoint ever holds a dropped step.
        skipped = int(jax.device_get(metrics["skipped_steps"]))
        if skipped > skipped_before:
          checkpointer.wait()
          raise NonFiniteError(
              f"non-finite loss or gradients in {skipped - skipped_before} step(s) up to step "
              f"{step} (nan_policy=halt; those updates were dropped); last checkpoint: "
              f"{checkpointer.latest_step()}")
      if is_ckpt or stop:
        checkpointer.save(step, state, train_iter)
      if eval_every > 0 and step % eval_every == 0 and not stop:
        run_eval(step, state)
        timer_start, timed_steps = time.perf_counter(), 0  # Keep evals out of step time.
      if stop:
        break

  if signals.requested:
    checkpointer.wait()
    writer.text(f"stopped by {signal.Signals(signals.received).name} at step {step}; "
                f"checkpoint saved")
    if signals.received == signal.SIGINT:
      raise KeyboardInterrupt
    return state
  checkpointer.wait()
  if int(jax.device_get(state.skipped_steps)) - skipped_before == step - start:
    # Nothing was learnt: exporting would hand the untrained params on as a result.
    raise NonFiniteError(_all_skipped(start + 1, step, workdir))
  exported = ckpt_lib.export(workdir, step, state.params, state.model_state, config,
                             task.export_files())
  writer.text(f"done: step {step}; params exported to {exported}")
  return state
