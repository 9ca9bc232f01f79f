"""Mesh from config (ICI/DCN shapes, -1 fill) and multi-host start-up settings."""
from __future__ import annotations

import jax
import ml_collections
import numpy as np
import pytest

from vlgen_jax.errors import UserError
from vlgen_jax.train import mesh as mesh_lib
from vlgen_jax.train import sharding as shd


def _config(mesh, dcn=None):
  return ml_collections.ConfigDict({"mesh": mesh, "dcn_mesh": dcn or {"data": 1, "fsdp": 1,
                                                                      "tensor": 1}})


def test_mesh_fills_minus_one_and_keeps_device_order():
  mesh = mesh_lib.create_mesh(_config({"data": -1, "fsdp": 2, "tensor": 2}))
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  assert mesh.axis_types == (jax.sharding.AxisType.Auto,) * 3
  assert [d.id for d in mesh.devices.flat] == [d.id for d in jax.devices()]
  assert mesh_lib.data_parallel_size(mesh) == 4
  one = mesh_lib.create_mesh(_config({"data": -1, "fsdp": 1, "tensor": 1}), jax.devices()[:1])
  assert dict(one.shape) == {"data": 1, "fsdp": 1, "tensor": 1}


def test_multi_slice_shapes():
  # 2 slices x 4 devices: data across slices (DCN), fsdp/tensor within (ICI).
  ici, dcn = mesh_lib.mesh_shapes(_config({"data": 1, "fsdp": -1, "tensor": 2},
                                          {"data": 2, "fsdp": 1, "tensor": 1}), 8, num_slices=2)
  assert ici == (1, 2, 2) and dcn == (2, 1, 1)
  with pytest.raises(UserError, match="config.dcn_mesh data=1,fsdp=1,tensor=1 spans 1 slices, "
                                      "but the devices form 2 slice"):
    mesh_lib.mesh_shapes(_config({"data": -1, "fsdp": 1, "tensor": 1}), 8, num_slices=2)
  with pytest.raises(UserError, match=r"needs 8 devices, but 4 devices are available per slice"):
    mesh_lib.mesh_shapes(_config({"data": 8, "fsdp": 1, "tensor": 1},
                                 {"data": 2, "fsdp": 1, "tensor": 1}), 8, num_slices=2)


@pytest.mark.parametrize("mesh,message", [
    ({"data": -1, "fsdp": -1, "tensor": 1}, "at most one -1"),
    ({"data": 0, "fsdp": 1, "tensor": 1}, "sizes must be positive"),
    ({"data": 8, "model": 1}, "config.mesh has unknown axes ['model']"),
])
def test_mesh_config_errors(mesh, message):
  with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
    mesh_lib.create_mesh(_config(mesh))


def test_process_data_shard_single_process():
  mesh = mesh_lib.create_mesh(_config({"data": 2, "fsdp": 2, "tensor": 2}))
  assert shd.process_data_shard(mesh, 16) == (0, 1, 16)


def test_global_batch_is_split_over_data_and_fsdp():
  mesh = mesh_lib.create_mesh(_config({"data": 2, "fsdp": 2, "tensor": 2}))
  local = {"tokens": np.arange(16 * 3).reshape(16, 3)}
  batch = shd.global_batch(local, mesh, 16)
  assert batch["tokens"].shape == (16, 3)
  assert set(shd.shard_shapes(batch["tokens"])) == {(4, 3)}
  np.testing.assert_array_equal(np.asarray(batch["tokens"]), local["tokens"])


@pytest.mark.parametrize("env,message", [
    ({"VLGEN_COORDINATOR_ADDRESS": "127.0.0.1:1234"},
     "VLGEN_COORDINATOR_ADDRESS is set but VLGEN_NUM_PROCESSES and VLGEN_PROCESS_ID is not"),
    ({"VLGEN_COORDINATOR_ADDRESS": "127.0.0.1:1234", "VLGEN_NUM_PROCESSES": "two",
      "VLGEN_PROCESS_ID": "0"}, "VLGEN_NUM_PROCESSES and VLGEN_PROCESS_ID must be integers"),
    ({"VLGEN_COORDINATOR_ADDRESS": "127.0.0.1:1234", "VLGEN_NUM_PROCESSES": "2",
      "VLGEN_PROCESS_ID": "2"}, r"VLGEN_PROCESS_ID=2 is not in \[0, 2\)"),
])
def test_distributed_env_errors(env, message):
  with pytest.raises(UserError, match=message):
    mesh_lib.maybe_initialize_distributed(env)


def test_single_process_env_does_not_initialize():
  assert mesh_lib.maybe_initialize_distributed({}) is False
  assert mesh_lib.maybe_initialize_distributed({"SLURM_NTASKS": "1", "SLURM_JOB_ID": "7"}) is False
  assert mesh_lib.maybe_initialize_distributed({"TPU_WORKER_HOSTNAMES": "localhost"}) is False
  assert not jax.distributed.is_initialized()
