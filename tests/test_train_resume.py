"""Preemption and exact resume, on real `vlgen train` subprocesses (8 CPU devices)."""
from __future__ import annotations

import signal
import time

import jax
import numpy as np

from trainer_helpers import (compile_cache_dir, read_metrics, run_train, start_train,  # noqa: F401
                             subprocess_env, train_losses)
from vlgen_jax.train.checkpoint import checkpoint_steps, load_params

# Dropout on, so the per-step RNG must resume exactly too; a sharded mesh, so
# the restored state must land on the right shardings.
RUN = {"total_steps": 30, "checkpoint_every": 10, "model.dropout": 0.1,
       "mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2}


def _check(proc):
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def test_sigterm_at_step_13_then_resume_is_bit_identical(tmp_path, compile_cache_dir):
  env = subprocess_env(compile_cache_dir)
  straight, stopped = tmp_path / "straight", tmp_path / "stopped"
  _check(run_train(straight, RUN, env))

  # The trainer sends itself SIGTERM after step 13: a real signal, handled by
  # the real handler, at a known step.
  first = _check(run_train(stopped, {**RUN, "debug.sigterm_after_step": 13}, env))
  assert "stopped by SIGTERM at step 13" in first.stderr
  assert max(train_losses(stopped)) == 13
  assert checkpoint_steps(stopped) == [10, 13]
  assert not (stopped / "export").exists()

  second = _check(run_train(stopped, RUN, env))
  assert "resumed from step 13" in second.stderr
  ref, resumed = train_losses(straight), train_losses(stopped)
  assert sorted(ref) == sorted(resumed) == list(range(1, 31))
  for step in range(1, 31):
    assert resumed[step] == ref[step], (step, resumed[step], ref[step])  # bit-identical
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  for step in (30, None):  # the last checkpoint and the export
    a, b = load_params(str(straight), step, one), load_params(str(stopped), step, one)
    jax.tree.map(np.testing.assert_array_equal, a, b)
  # The run went somewhere: params moved from step 10 to 30.
  early = load_params(str(straight), 10, one)
  assert not np.array_equal(early["head"], load_params(str(straight), 30, one)["head"])


def test_external_sigint_saves_at_the_current_step(tmp_path, compile_cache_dir):
  """A signal from outside at an arbitrary moment: checkpoint at the step the
  run reached, exit status 130 for SIGINT, and the next run resumes there."""
  env = subprocess_env(compile_cache_dir)
  workdir = tmp_path / "run"
  run = {**RUN, "total_steps": 100_000, "optimizer.schedule": "constant"}
  proc = start_train(workdir, run, env)
  try:
    deadline = time.time() + 240
    while len(read_metrics(workdir)) < 3:
      assert proc.poll() is None, proc.communicate()[1][-3000:]
      assert time.time() < deadline, "no progress"
      time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 130, stderr[-3000:]
  last = max(train_losses(workdir))
  assert f"stopped by SIGINT at step {last}" in stderr
  assert checkpoint_steps(workdir)[-1] == last

  resumed = _check(run_train(workdir, {**run, "total_steps": last + 2}, env))
  assert f"resumed from step {last}" in resumed.stderr
  assert max(train_losses(workdir)) == last + 2
