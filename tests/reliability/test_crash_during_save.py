"""Crash during save: SIGKILL while an async checkpoint is being written ->
the next start warns about the partial directory, never restores it, resumes
from the last complete checkpoint and continues bit-identically.

`debug.slow_save_seconds` holds every async save open (files written, not yet
committed by Orbax's rename of `<step>.orbax-checkpoint-tmp*` to `<step>`), so
the kill lands mid-save deterministically; when exactly within the save is
drawn from a seeded RNG.
"""
from __future__ import annotations

import os
import signal
import time

import numpy as np

from fault_helpers import (RUN, Run, assert_trees_equal, complete_steps, last_logged, logged,
                           one_device, partial_saves, run_ok, wait_for, warning_lines)
from vlgen_jax.train.checkpoint import load_params

SLOW = {"debug.slow_save_seconds": 60.0}  # far longer than any kill takes to arrive
SEED = 7


def _kill_during_save(workdir, step: int, env, rng, name: str) -> None:
  """Starts a slow-saving run and SIGKILLs it while `step` is being saved."""
  run = Run(workdir, {**RUN, **SLOW}, env, workdir.parent / f"{name}.log")
  tmp_prefix = f"{step}.orbax-checkpoint-tmp"
  wait_for(lambda: any(d.startswith(tmp_prefix) for d in partial_saves(workdir)),
           f"the save of step {step}", run)
  time.sleep(float(rng.uniform(0.0, 0.5)))  # somewhere within the save
  assert run.running()
  os.kill(run.proc.pid, signal.SIGKILL)
  rc, _ = run.wait()
  assert rc == -signal.SIGKILL
  assert step not in complete_steps(workdir)
  assert any(d.startswith(tmp_prefix) for d in partial_saves(workdir))


def _assert_ignored_partial(out: str, step: int) -> None:
  warnings = [w for w in warning_lines(out) if "partial checkpoint" in w]
  assert len(warnings) == 1 and f"{step}.orbax-checkpoint-tmp" in warnings[0], out[-3000:]


def test_sigkill_during_three_saves_resumes_from_last_complete(tmp_path, env, reference):
  rng = np.random.default_rng(SEED)
  workdir = tmp_path / "run"

  # 1. Killed during the first save ever (step 10): nothing complete, so the
  # next start warns and trains from scratch.
  _kill_during_save(workdir, 10, env, rng, "kill1")
  assert complete_steps(workdir) == []
  out = run_ok(workdir, {**RUN, "debug.sigterm_after_step": 14}, env, name="resume1")
  _assert_ignored_partial(out, 10)
  assert "resumed from" not in out and "training steps 1..30" in out
  assert complete_steps(workdir) == [10, 14] and partial_saves(workdir) == []

  # 2. Killed during the save of step 20: back to 14.
  _kill_during_save(workdir, 20, env, rng, "kill2")
  assert complete_steps(workdir) == [10, 14]
  out = run_ok(workdir, {**RUN, "debug.sigterm_after_step": 23}, env, name="resume2")
  _assert_ignored_partial(out, 20)
  assert "resumed from step 14" in out
  assert complete_steps(workdir) == [14, 20, 23]  # max_to_keep=3

  # 3. Killed during the final save (step 30, before the export): back to 23.
  _kill_during_save(workdir, 30, env, rng, "kill3")
  assert not (workdir / "export").exists()
  out = run_ok(workdir, RUN, env, name="resume3")
  _assert_ignored_partial(out, 30)
  assert "resumed from step 23" in out and "done: step 30" in out
  assert partial_saves(workdir) == []

  # Steps trained again after a crash are logged again; every logged value,
  # first or repeated, is the reference's to the bit.
  ref = last_logged(reference)
  for step, loss in logged(workdir):
    assert loss == ref[step], (step, loss, ref[step])
  assert sorted(last_logged(workdir)) == list(range(1, 31))
  one = one_device()
  assert_trees_equal(load_params(workdir, None, one), load_params(reference, None, one))
