"""Orbax checkpoints of the train state and the data iterator, and the
params-only export for sampling.

Layout under WORKDIR:
  config.json                 the run's config (written at start)
  checkpoints/<step>/state    TrainState (Orbax PyTree: step, params, opt_state,
                              model_state, rng, skipped_steps)
  checkpoints/<step>/data     Grain iterator state, one JSON file per process
  export/params               params only (Orbax PyTree), for sampling
  export/model_state          the Task's non-gradient state, when it has any
  export/config.json, export/meta.json (step), export/assets/*  (Task.export_files)

Checkpoints restore onto any mesh: the caller passes the target shardings.
Only complete steps are listed (Orbax commits a step atomically), so resuming
after a crash mid-save uses the previous complete one.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Any, Iterator

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.sharding import NamedSharding, PartitionSpec as P

from vlgen_jax.errors import UserError
from vlgen_jax.train.step import TrainState

PyTree = Any
CHECKPOINTS = "checkpoints"
EXPORT = "export"
STATE_ITEM = "state"
DATA_ITEM = "data"


def _grain_checkpoint():
  import grain  # Grain's Orbax handler for iterator state (per-process JSON).
  return grain.checkpoint


class Checkpointer:
  """Saves and restores (TrainState, data iterator) pairs under WORKDIR/checkpoints."""

  def __init__(self, workdir: str, *, max_to_keep: int, async_save: bool = True):
    self.directory = os.path.join(os.path.abspath(workdir), CHECKPOINTS)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep or None, create=True, enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True)
    self.manager = ocp.CheckpointManager(self.directory, item_names=(STATE_ITEM, DATA_ITEM),
                                         options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state: TrainState, data_iter: Iterator) -> bool:
    """Starts saving `step` (device arrays are copied before this returns, so
    the state may be donated right after). No-op if `step` is already saved."""
    if step in self.manager.all_steps():
      return False
    gc = _grain_checkpoint()
    args = ocp.args.Composite(**{
        STATE_ITEM: ocp.args.StandardSave(state.to_dict()),
        DATA_ITEM: gc.CheckpointSave(data_iter),
    })
    return self.manager.save(step, args=args, force=True)

  def restore(self, step: int, target: TrainState, data_iter: Iterator) -> TrainState:
    """Restores `step` onto `target`'s shardings (ShapeDtypeStructs) and sets
    `data_iter` to the saved position of this process's data."""
    gc = _grain_checkpoint()
    data_dir = os.path.join(self.directory, str(step), DATA_ITEM)
    name = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    if not os.path.exists(os.path.join(data_dir, name)):
      saved = sorted(f for f in os.listdir(data_dir) if f.startswith("process_"))
      raise UserError(f"checkpoint step {step} has data iterator state {saved}, none for this "
                      f"process ({name}); resume with the same number of processes")
    args = ocp.args.Composite(**{
        STATE_ITEM: ocp.args.StandardRestore(target.to_dict()),
        DATA_ITEM: gc.CheckpointRestore(data_iter),
    })
    restored = self.manager.restore(step, args=args)
    return TrainState.from_dict(dict(restored[STATE_ITEM]))

  def wait(self) -> None:
    """Blocks until pending async saves are committed."""
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


# ---- config -----------------------------------------------------------------

def save_config(workdir: str, config: ml_collections.ConfigDict, name: str = "config.json") -> None:
  """Writes the config as JSON (process 0 only)."""
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  tmp = os.path.join(workdir, name + ".tmp")
  with open(tmp, "w") as f:
    f.write(config.to_json(indent=2, sort_keys=True))
  os.replace(tmp, os.path.join(workdir, name))


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config of a run: `export/config.json`, else `config.json`."""
  for path in (os.path.join(workdir, EXPORT, "config.json"), os.path.join(workdir, "config.json")):
    if os.path.exists(path):
      with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))
  raise UserError(f"no config.json in {workdir} (not a vlgen train workdir?)")


# ---- params-only export -------------------------------------------------------

def export(workdir: str, step: int, params: PyTree, model_state: PyTree,
           config: ml_collections.ConfigDict, files: dict[str, str] | None = None) -> str:
  """Writes WORKDIR/export (params, model state, config, assets) for sampling.

  Collective: every process calls it; process 0 writes the small files.
  """
  root = os.path.join(os.path.abspath(workdir), EXPORT)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.join(root, "params"), params, force=True)
  if jax.tree.leaves(model_state):
    checkpointer.save(os.path.join(root, "model_state"), model_state, force=True)
  checkpointer.wait_until_finished()
  checkpointer.close()
  if jax.process_index() == 0:
    save_config(root, config)
    assets = os.path.join(root, "assets")
    for name, src in (files or {}).items():
      if not os.path.exists(src):
        raise UserError(f"export file {name!r} not found: {src}")
      os.makedirs(assets, exist_ok=True)
      shutil.copyfile(src, os.path.join(assets, name))
    with open(os.path.join(root, "meta.json"), "w") as f:
      json.dump({"step": int(step)}, f)
  return root


def export_step(workdir: str) -> int | None:
  path = os.path.join(workdir, EXPORT, "meta.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return int(json.load(f)["step"])


def _checkpoint_steps(workdir: str) -> list[int]:
  root = os.path.join(workdir, CHECKPOINTS)
  if not os.path.isdir(root):
    return []
  return sorted(int(d) for d in os.listdir(root)
                if d.isdigit() and os.path.exists(os.path.join(root, d, STATE_ITEM)))


def _restore_tree(path: str, shardings, subtree: str | None) -> PyTree:
  """Restores (the `subtree` item of) an Orbax PyTree checkpoint onto `shardings`:
  None = replicated on all devices, one Sharding for every leaf, or a tree."""
  handler = ocp.PyTreeCheckpointHandler()
  metadata = handler.metadata(epath.Path(path)).tree
  if subtree is not None:
    metadata = metadata[subtree]
  if shardings is None:
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("devices",))
    shardings = NamedSharding(mesh, P())
  if isinstance(shardings, jax.sharding.Sharding):
    shardings = jax.tree.map(lambda _: shardings, metadata)
  target = jax.tree.map(lambda m, s: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=s),
                        metadata, shardings)
  if subtree is not None:
    target = {subtree: target}
  checkpointer = ocp.Checkpointer(handler)
  restored = checkpointer.restore(
      path, args=ocp.args.PyTreeRestore(
          item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
          partial_restore=subtree is not None))
  checkpointer.close()
  return restored[subtree] if subtree is not None else restored


def load_params(workdir: str, step: int | None = None, shardings=None) -> PyTree:
  """Params only (no optimizer state) of a run, placed on `shardings`.

  `step=None`: the newest of the export and the latest checkpoint; an int:
  that checkpoint step. `shardings`: None (replicated on all devices), one
  `jax.sharding.Sharding` for every leaf, or a tree of them like the params.
  """
  steps = _checkpoint_steps(workdir)
  exported = export_step(workdir)
  if step is None:
    if exported is not None and (not steps or exported >= steps[-1]):
      return _restore_tree(os.path.join(os.path.abspath(workdir), EXPORT, "params"), shardings, None)
    if not steps:
      raise UserError(f"no checkpoint or export in {workdir}")
    step = steps[-1]
  if step not in steps:
    if step == exported:
      return _restore_tree(os.path.join(os.path.abspath(workdir), EXPORT, "params"), shardings, None)
    raise UserError(f"no checkpoint for step {step} in {workdir} (have: {steps or 'none'})")
  path = os.path.join(os.path.abspath(workdir), CHECKPOINTS, str(step), STATE_ITEM)
  return _restore_tree(path, shardings, "params")
