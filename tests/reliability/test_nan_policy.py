"""NaN/Inf in a step (injected with `debug.nan_at_step`): `nan_policy=skip`
drops that update (the whole train state stays as it was, the step is counted
and logged) and trains on; `halt` exits with status 3 and one clear line, and
no checkpoint is written after the bad step, so the last one is good and
resumes.

The injection is compiled into the train step, and XLA fuses that program a
little differently, so its losses before the NaN match the reference run to
float32 rounding, not to the bit; comparisons within the injected program
are exact."""
from __future__ import annotations

import math

import jax
import numpy as np
import pytest

from fault_helpers import (RUN, assert_trees_equal, complete_steps, error_lines, last_logged,
                           logged, one_device, run, run_ok)
from vlgen_jax.train.checkpoint import load_params, load_train_state

NAN_AT = 12
SKIP = {**RUN, "debug.nan_at_step": NAN_AT, "checkpoint_every": 1, "max_to_keep": 0,
        "debug.sigterm_after_step": NAN_AT + 2}
# Same compiled step as SKIP (the policy acts on the host); syncs with the
# device at logged steps 7, 14 and checkpoint steps 5, 10, 15.
HALT = {**RUN, "debug.nan_at_step": NAN_AT, "nan_policy": "halt", "log_every": 7,
        "checkpoint_every": 5}


@pytest.fixture(scope="module")
def skip_run(tmp_path_factory, env):
  workdir = tmp_path_factory.mktemp("nan_skip") / "run"
  out = run_ok(workdir, SKIP, env)
  return workdir, out


def test_skip_drops_the_update_counts_it_and_trains_on(skip_run, reference):
  workdir, out = skip_run
  assert f"stopped by SIGTERM at step {NAN_AT + 2}" in out

  losses, ref = last_logged(workdir), last_logged(reference)
  np.testing.assert_allclose([losses[s] for s in range(1, NAN_AT)],
                             [ref[s] for s in range(1, NAN_AT)], rtol=1e-6)
  assert losses[NAN_AT] == "nan"  # logged as it was, not hidden
  assert all(math.isfinite(losses[s]) for s in (NAN_AT + 1, NAN_AT + 2))
  nonfinite = last_logged(workdir, "train/nonfinite")
  skipped = last_logged(workdir, "train/skipped_steps")
  assert [s for s, v in nonfinite.items() if v] == [NAN_AT]
  assert [skipped[s] for s in (NAN_AT - 1, NAN_AT, NAN_AT + 1, NAN_AT + 2)] == [0, 1, 1, 1]
  step_line = [line for line in out.splitlines() if line.startswith(f"step {NAN_AT} |")]
  assert step_line and "loss nan" in step_line[0] and "skipped_steps 1" in step_line[0]

  # The update was dropped: params, optimizer state, model state and RNG
  # after step 12 are those after step 11; only the counters moved.
  one = one_device()
  before, after = load_train_state(workdir, NAN_AT - 1, one), load_train_state(workdir, NAN_AT, one)
  for key in ("params", "opt_state", "model_state", "rng"):
    assert_trees_equal(after[key], before[key])
  assert (int(before["step"]), int(after["step"])) == (NAN_AT - 1, NAN_AT)
  assert (int(before["skipped_steps"]), int(after["skipped_steps"])) == (0, 1)
  # ... and training went on from there.
  later = load_train_state(workdir, NAN_AT + 2, one)
  assert int(later["skipped_steps"]) == 1
  assert not (later["params"]["head"] == after["params"]["head"]).all()


def test_halt_exits_3_and_keeps_the_last_good_checkpoint(tmp_path, env, reference, skip_run):
  workdir = tmp_path / "run"
  rc, out = run(workdir, HALT, env)
  assert rc == 3, out[-4000:]
  assert error_lines(out) == [
      "error: non-finite loss or gradients in 1 step(s) up to step 14 (nan_policy=halt; those "
      "updates were dropped); last checkpoint: 10"]
  assert "Traceback" not in out
  assert complete_steps(workdir) == [5, 10]  # nothing saved after step 12
  assert not (workdir / "export").exists()
  assert [s for s, _ in logged(workdir)] == [7, 14]
  skip_workdir, _ = skip_run
  assert last_logged(workdir)[7] == last_logged(skip_workdir)[7]

  # The kept checkpoint is the good state: bit-identical to the same
  # program's state after step 10 when the policy is skip.
  one = one_device()
  good = load_train_state(workdir, 10, one)
  assert int(good["skipped_steps"]) == 0
  assert_trees_equal(good, load_train_state(skip_workdir, 10, one))

  # It resumes (without the injected NaN) and trains like the reference.
  out = run_ok(workdir, RUN, env)
  assert "resumed from step 10" in out
  ref, losses = last_logged(reference), last_logged(workdir)
  np.testing.assert_allclose([losses[s] for s in range(11, 31)],
                             [ref[s] for s in range(11, 31)], rtol=1e-5)
  params = load_params(workdir, None, one)
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params))
