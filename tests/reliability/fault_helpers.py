"""Shared by the reliability tests: the reference run config, `vlgen train`
subprocesses with their stderr in a log file (a pipe could fill up and stall
a long run), and readers of what a run left in its workdir."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import time

import numpy as np

from trainer_helpers import TOY, REPO_ROOT, read_metrics, subprocess_env, train_command  # noqa: F401

# The toy model on a data=2, fsdp=2, tensor=2 mesh with dropout on: a resumed
# run must restore sharded state and continue the per-step RNG exactly. The
# same config as tests/test_train_resume.py, so a full test session compiles
# the train step once.
RUN = {"total_steps": 30, "checkpoint_every": 10, "model.dropout": 0.1,
       "mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2}
TIMEOUT = 300


class Run:
  """A `vlgen train` subprocess writing stdout+stderr to `log`."""

  def __init__(self, workdir, overrides, env, log, config: str = TOY):
    self.log = pathlib.Path(log)
    self._file = open(self.log, "w")  # noqa: SIM115  (closed in wait)
    self.proc = subprocess.Popen(train_command(workdir, overrides, config), env=env, cwd=REPO_ROOT,
                                 stdout=self._file, stderr=subprocess.STDOUT, text=True)

  def wait(self, timeout: float = TIMEOUT) -> tuple[int, str]:
    try:
      rc = self.proc.wait(timeout=timeout)
    finally:
      if self.proc.poll() is None:
        self.proc.kill()
        self.proc.wait()
      self._file.close()
    return rc, self.output

  @property
  def output(self) -> str:
    return self.log.read_text()

  def running(self) -> bool:
    return self.proc.poll() is None


def run(workdir, overrides, env, name: str | None = None, config: str = TOY
        ) -> tuple[int, str]:
  """Runs `vlgen train` to the end: (exit status, output)."""
  workdir = pathlib.Path(workdir)
  log = workdir.parent / f"{name or workdir.name}-{time.monotonic_ns()}.log"
  return Run(workdir, overrides, env, log, config).wait()


def run_ok(workdir, overrides, env, name: str | None = None, config: str = TOY) -> str:
  rc, out = run(workdir, overrides, env, name, config)
  assert rc == 0, out[-4000:]
  return out


def error_lines(output: str) -> list[str]:
  return [line for line in output.splitlines() if line.startswith("error:")]


def warning_lines(output: str) -> list[str]:
  return [line for line in output.splitlines() if line.startswith("warning:")]


def complete_steps(workdir) -> list[int]:
  """Committed checkpoint steps (Orbax renames a step to its number when done)."""
  root = pathlib.Path(workdir) / "checkpoints"
  return sorted(int(d) for d in os.listdir(root) if d.isdigit()) if root.is_dir() else []


def partial_saves(workdir) -> list[str]:
  root = pathlib.Path(workdir) / "checkpoints"
  return sorted(d for d in os.listdir(root) if ".orbax-checkpoint-tmp" in d) \
      if root.is_dir() else []


def logged(workdir, key: str = "train/loss") -> list[tuple[int, object]]:
  """Every (step, value) of `key` in metrics.jsonl, in order (repeats included)."""
  return [(m["step"], m[key]) for m in read_metrics(workdir) if key in m]


def last_logged(workdir, key: str = "train/loss") -> dict[int, object]:
  return dict(logged(workdir, key))


def wait_for(predicate, what: str, run_: Run | None = None, timeout: float = TIMEOUT,
             poll: float = 0.02) -> None:
  deadline = time.monotonic() + timeout
  while not predicate():
    if run_ is not None and not run_.running():
      raise AssertionError(f"run ended before {what}:\n{run_.output[-4000:]}")
    if time.monotonic() > deadline:
      raise AssertionError(f"timed out waiting for {what}")
    time.sleep(poll)


def assert_trees_equal(a, b) -> None:
  import jax
  ka = jax.tree_util.tree_flatten_with_path(a)[0]
  kb = jax.tree_util.tree_flatten_with_path(b)[0]
  assert [p for p, _ in ka] == [p for p, _ in kb]
  for (path, x), (_, y) in zip(ka, kb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y),
                                  err_msg=jax.tree_util.keystr(path))


def one_device():
  """A sharding that puts a whole restored tree on one device (for comparisons)."""
  import jax
  return jax.sharding.SingleDeviceSharding(jax.devices()[0])


def config_json(workdir) -> dict:
  return json.loads((pathlib.Path(workdir) / "config.json").read_text())
