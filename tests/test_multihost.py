"""Two `jax.distributed` CPU processes (4 devices each, coordinator on
127.0.0.1) train, stop and checkpoint together, and resume — on the same mesh
and on a mesh whose tensor axis spans both processes — with the losses of one
process holding all 8 devices and the same global batch."""
from __future__ import annotations

import socket

import jax
import numpy as np
import pytest

from trainer_helpers import (compile_cache_dir, start_train, subprocess_env, toy_config,  # noqa: F401
                             train_losses)
from vlgen_jax.train import checkpoint as ckpt_lib
from vlgen_jax.train.trainer import train

# 8 heads so that tensor=8 can split them when resuming on the second mesh.
RUN = {"total_steps": 10, "checkpoint_every": 5, "model.num_heads": 8, "model.head_dim": 2}
MESH_A = {"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2}  # batch rows split by process
MESH_B = {"mesh.data": 1, "mesh.fsdp": 1, "mesh.tensor": 8}  # both processes feed all rows


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run_two_processes(workdir, overrides, cache_dir, timeout=300):
  port = _free_port()
  procs = []
  for i in range(2):
    env = subprocess_env(cache_dir, devices=4, extra={
        "VLGEN_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "VLGEN_NUM_PROCESSES": "2",
        "VLGEN_PROCESS_ID": str(i)})
    procs.append(start_train(workdir, overrides, env))
  outputs = []
  try:
    for p in procs:
      outputs.append(p.communicate(timeout=timeout))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  return [err for _, err in outputs]


@pytest.mark.multiprocess
def test_two_processes_stop_resume_match_one_process(tmp_path, compile_cache_dir):
  workdir = tmp_path / "two"
  # Both processes get SIGTERM after step 6 and must agree to stop there.
  errs = _run_two_processes(workdir, {**RUN, **MESH_A, "debug.sigterm_after_step": 6},
                            compile_cache_dir)
  assert "stopped by SIGTERM at step 6" in errs[0] and "on 8 devices" in errs[0]
  assert "step 1 |" not in errs[1]  # only process 0 logs
  saved = workdir / "checkpoints" / "6" / "data"
  assert sorted(p.name for p in saved.glob("process_*.json")) == [
      "process_0-of-2.json", "process_1-of-2.json"]
  assert max(train_losses(workdir)) == 6

  errs = _run_two_processes(workdir, {**RUN, **MESH_B}, compile_cache_dir)
  assert "resumed from step 6" in errs[0] and "done: step 10" in errs[0]

  reference = tmp_path / "one"
  state = train(toy_config({**RUN, **MESH_A}), str(reference))
  two, one = train_losses(workdir), train_losses(reference)
  assert sorted(two) == sorted(one) == list(range(1, 11))
  for step in one:
    # Same rows and updates; only all-reduce order differs (gloo across
    # processes, other mesh after the resume).
    assert two[step] == pytest.approx(one[step], rel=2e-5), step
  exported = ckpt_lib.load_params(str(workdir))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               jax.device_get(exported), jax.device_get(state.params))
