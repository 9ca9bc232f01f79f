"""Checkpoints restore onto other meshes and device counts; async saves are
not corrupted by the donated state; params-only export and load_params."""
from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from trainer_helpers import (toy_config,
                             train_losses)
from vlgen_jax.errors import UserError
from vlgen_jax.train import checkpoint as ckpt_lib
from vlgen_jax.train import mesh as mesh_lib
from vlgen_jax.train.trainer import train

SAVED_MESH = {"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2}
RUN = {"total_steps": 6, "checkpoint_every": 2, "optimizer.schedule": "constant"}


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
  """6 steps on 8 devices as data=2,fsdp=2,tensor=2, checkpoints at 2, 4, 6."""
  workdir = tmp_path_factory.mktemp("saved")
  state = train(toy_config({**SAVED_MESH, **RUN}), str(workdir))
  return workdir, jax.device_get(state.params)


def _copy(src, dst):
  shutil.copytree(src, dst)
  return dst


def _assert_equal_trees(a, b):
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(a), jax.device_get(b))


def test_checkpoint_layout_and_export(saved_run):
  workdir, params = saved_run
  assert ckpt_lib.checkpoint_steps(str(workdir)) == [2, 4, 6]
  assert (workdir / "checkpoints" / "6" / "data" / "process_0-of-1.json").exists()
  assert json.loads((workdir / "export" / "meta.json").read_text()) == {"step": 6}
  saved_config = ckpt_lib.load_config(str(workdir))
  assert saved_config.task == "toy" and saved_config.total_steps == 6
  assert (workdir / "config.json").exists()
  # The export and the last checkpoint hold the same params.
  _assert_equal_trees(ckpt_lib.load_params(str(workdir)), params)
  _assert_equal_trees(ckpt_lib.load_params(str(workdir), step=6), params)
  with pytest.raises(UserError, match="no checkpoint for step 5"):
    ckpt_lib.load_params(str(workdir), step=5)


@pytest.mark.parametrize("new_mesh", [{"data": 4, "fsdp": 2, "tensor": 1},
                                      {"data": 2, "fsdp": 1, "tensor": 4}])
def test_load_params_onto_another_mesh(saved_run, new_mesh):
  workdir, params = saved_run
  config = toy_config({f"mesh.{k}": v for k, v in new_mesh.items()})
  mesh = mesh_lib.create_mesh(config)
  from vlgen_jax.tasks.toy import ToyTask
  from vlgen_jax.train import sharding as shd
  task = ToyTask(config)
  batch = {"tokens": jax.ShapeDtypeStruct((16, 9), np.int32)}
  boxed, _ = jax.eval_shape(task.init, jax.random.PRNGKey(0), batch)
  shardings = shd.logical_to_shardings(shd.logical_specs(boxed), mesh,
                                       shd.logical_axis_rules(config))
  restored = ckpt_lib.load_params(str(workdir), step=4, shardings=shardings)
  _assert_equal_trees(restored, ckpt_lib.load_params(str(workdir), step=4))
  head = restored["head"]  # (embed, vocab) -> (fsdp, tensor)
  assert head.sharding.spec == P("fsdp", "tensor") and head.sharding.mesh.shape == mesh.shape
  assert {s.data.shape for s in head.addressable_shards} == {
      (16 // new_mesh["fsdp"], 32 // new_mesh["tensor"])}


def test_resume_on_another_mesh_and_on_one_device(saved_run, tmp_path):
  workdir, params = saved_run
  cases = {"data4_fsdp2": ({"mesh.data": 4, "mesh.fsdp": 2}, None),
           "one_device": ({}, jax.devices()[:1])}
  finals = {}
  for name, (mesh, devices) in cases.items():
    run = _copy(workdir, tmp_path / name)
    state = train(toy_config({**mesh, **RUN, "total_steps": 8}), str(run), devices=devices)
    # Restored exactly (the step-6 params), then trained on: steps 7 and 8 logged.
    losses = train_losses(run)
    assert sorted(losses)[-2:] == [7, 8] and all(np.isfinite(losses[s]) for s in (7, 8))
    assert int(state.step) == 8
    finals[name] = jax.device_get(state.params)
    assert ckpt_lib.checkpoint_steps(str(run))[-1] == 8
  # Both continuations agree (the same training math on different meshes).
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               finals["data4_fsdp2"], finals["one_device"])
  one = NamedSharding(jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("d",)), P())
  _assert_equal_trees(ckpt_lib.load_params(str(tmp_path / "one_device"), step=6, shardings=one),
                      params)


def test_async_save_is_not_corrupted_by_donation(saved_run, tmp_path):
  """Step 4 was saved asynchronously while training went on with the donated
  state: resuming from it must reproduce step 6 bit for bit."""
  workdir, params = saved_run
  run = _copy(workdir, tmp_path / "from4")
  shutil.rmtree(run / "checkpoints" / "6")
  shutil.rmtree(run / "export")
  state = train(toy_config({**SAVED_MESH, **RUN}), str(run))
  _assert_equal_trees(state.params, params)
  ref = train_losses(workdir)
  resumed = train_losses(run)
  assert resumed[5] == ref[5] and resumed[6] == ref[6]


def test_finished_run_without_export_gets_one(saved_run, tmp_path):
  """A run stopped between its last checkpoint and the export: `vlgen train`
  on it trains nothing and writes the export."""
  workdir, params = saved_run
  run = _copy(workdir, tmp_path / "no_export")
  shutil.rmtree(run / "export")
  state = train(toy_config({**SAVED_MESH, **RUN}), str(run))
  assert int(state.step) == 6 and ckpt_lib.export_step(str(run)) == 6
  _assert_equal_trees(ckpt_lib.load_params(str(run)), params)


def test_export_writes_assets_config_and_params(tmp_path):
  asset = tmp_path / "tokenizer.model"
  asset.write_bytes(b"\x00sentencepiece\xff")
  config = toy_config()
  params = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": {"c": np.ones(2, np.int32)}}
  root = ckpt_lib.export(str(tmp_path / "run"), 12, params, {}, config,
                         {"tokenizer.model": str(asset)})
  assert (tmp_path / "run" / "export" / "assets" / "tokenizer.model").read_bytes() == \
      asset.read_bytes()
  assert ckpt_lib.export_step(str(tmp_path / "run")) == 12
  assert ckpt_lib.load_config(str(tmp_path / "run")).task == "toy"
  assert not (tmp_path / "run" / "export" / "model_state").exists()  # empty: not written
  loaded = ckpt_lib.load_params(str(tmp_path / "run"))
  _assert_equal_trees(loaded, params)
  assert root.endswith("export")
  with pytest.raises(UserError, match="export file 'vocab' not found"):
    ckpt_lib.export(str(tmp_path / "run2"), 1, params, {}, config, {"vocab": str(tmp_path / "x")})
