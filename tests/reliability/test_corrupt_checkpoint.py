"""Damaged checkpoints on disk: truncated or deleted array files are detected
at restore, the step is skipped with a warning (and moved aside so the run can
write that step again), and the newest usable step is restored; when no step
is usable the run stops with one error line and changes nothing."""
from __future__ import annotations

import os
import pathlib
import shutil

from fault_helpers import (RUN, assert_trees_equal, complete_steps, config_json, error_lines,
                           last_logged, logged, one_device, run, run_ok, warning_lines)
from vlgen_jax.train.checkpoint import load_params, load_train_state


def _array_files(workdir, step: int) -> list[pathlib.Path]:
  """The files holding the arrays of a step (OCDBT data files under state/)."""
  state = pathlib.Path(workdir) / "checkpoints" / str(step) / "state"
  files = [p for p in state.rglob("*") if p.is_file() and p.parent.name == "d"]
  assert files, f"no array files under {state}"
  return files


def _truncate(files) -> None:
  for f in files:
    os.truncate(f, os.path.getsize(f) // 2)


def _delete(files) -> None:
  for f in files:
    f.unlink()


def test_truncated_and_deleted_steps_fall_back_to_the_newest_usable(tmp_path, env, reference):
  workdir = tmp_path / "run"
  shutil.copytree(reference, workdir)
  _truncate(_array_files(workdir, 30))
  _delete(_array_files(workdir, 20))

  # The run finished at 30, so this start finds its newest checkpoint
  # damaged, goes back to 10 and trains 11..30 again.
  out = run_ok(workdir, RUN, env)
  warnings = warning_lines(out)
  assert len(warnings) == 4, out[-4000:]
  assert warnings[0].startswith(f"warning: checkpoint step 30 in {workdir}/checkpoints is "
                                "unusable (") and "trying an older one" in warnings[0]
  assert warnings[1].startswith("warning: checkpoint step 20 ") and "unusable" in warnings[1]
  assert warnings[2] == (f"warning: moved unusable checkpoint step 30 to "
                         f"{workdir}/corrupt_checkpoints/30")
  assert warnings[3] == (f"warning: moved unusable checkpoint step 20 to "
                         f"{workdir}/corrupt_checkpoints/20")
  assert "resumed from step 10" in out and "done: step 30" in out
  assert sorted(os.listdir(workdir / "corrupt_checkpoints")) == ["20", "30"]

  # The steps were written again, and everything matches the reference.
  assert complete_steps(workdir) == [10, 20, 30]
  ref = last_logged(reference)
  retrained = logged(workdir)[len(logged(reference)):]
  assert [s for s, _ in retrained] == list(range(11, 31))
  assert all(loss == ref[s] for s, loss in retrained), retrained
  one = one_device()
  for step in (20, 30):
    assert_trees_equal(load_train_state(workdir, step, one), load_train_state(reference, step, one))
  assert_trees_equal(load_params(workdir, None, one), load_params(reference, None, one))


def test_no_usable_checkpoint_is_one_error_and_changes_nothing(tmp_path, env, reference):
  workdir = tmp_path / "run"
  shutil.copytree(reference, workdir)
  _delete(_array_files(workdir, 30))
  _truncate(_array_files(workdir, 20))
  (workdir / "checkpoints" / "10" / "data" / "process_0-of-1.json").unlink()
  before = sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*"))
  config_before = config_json(workdir)

  # A different total_steps: the config would be rewritten if the run started.
  rc, out = run(workdir, {**RUN, "total_steps": 40}, env)
  assert rc == 2, out[-4000:]
  errors = error_lines(out)
  assert len(errors) == 1 and "Traceback" not in out
  assert errors[0].startswith(f"error: no usable checkpoint in {workdir}/checkpoints (step 30: ")
  assert "; step 20: " in errors[0]
  assert "; step 10: no data iterator state in 10/data)" in errors[0]
  assert errors[0].endswith("move that directory aside to start the run from scratch")
  assert len([w for w in warning_lines(out) if "is unusable" in w]) == 3
  assert sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*")) == before
  assert config_json(workdir) == config_before


def test_abandoned_tensorstore_reads_are_not_reported(caplog):
  """A read Orbax gave up on fails later, and asyncio reports the task, with
  its traceback, when it is collected (here: the call asyncio makes then);
  the restore's own error already said what is wrong. Other never-retrieved
  task exceptions are still reported."""
  import asyncio
  import logging
  from vlgen_jax.train import checkpoint

  checkpoint._ignore_abandoned_reads()  # pylint: disable=protected-access
  loop = asyncio.new_event_loop()

  def abandoned(message):
    try:
      raise ValueError(message)
    except ValueError as e:
      loop.call_exception_handler({"message": "Task exception was never retrieved",
                                   "exception": e})
  try:
    with caplog.at_level(logging.ERROR, logger="asyncio"):
      abandoned("OUT_OF_RANGE: Error reading ... in OCDBT database [tensorstore_spec='{}']")
      assert not caplog.records
      abandoned("something else")
      assert [r.getMessage() for r in caplog.records] == ["Task exception was never retrieved"]
      assert caplog.records[0].exc_info[1].args == ("something else",)
  finally:
    loop.close()
