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

  def __init__(self, workdir, *, max_to_keep: int, async_save: bool = True):
    self.directory = workdir_path(workdir) / CHECKPOINTS
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
    data_dir = self.directory / str(step) / DATA_ITEM
    name = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    if not (data_dir / name).exists():
      saved = sorted(f.name for f in data_dir.iterdir() if f.name.startswith("process_"))
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


def workdir_path(workdir) -> epath.Path:
  """WORKDIR as an absolute `epath.Path` (local paths or gs://... alike)."""
  workdir = str(workdir)
  return epath.Path(workdir if "://" in workdir else os.path.abspath(workdir))


# ---- config -----------------------------------------------------------------

def save_config(workdir, config: ml_collections.ConfigDict, name: str = "config.json") -> None:
  """Writes the config as JSON (process 0 only)."""
  if jax.process_index() != 0:
    return
  root = workdir_path(workdir)
  root.mkdir(parents=True, exist_ok=True)
  tmp = root / (name + ".tmp")
  tmp.write_text(config.to_json(indent=2, sort_keys=True))
  tmp.replace(root / name)


def load_config(workdir) -> ml_collections.ConfigDict:
  """The config of a run: `export/config.json`, else `config.json`."""
  root = workdir_path(workdir)
  for path in (root / EXPORT / "config.json", root / "config.json"):
    if path.exists():
      return ml_collections.ConfigDict(json.loads(path.read_text()))
  raise UserError(f"no config.json in {workdir} (not a vlgen train workdir?)")


# ---- params-only export -------------------------------------------------------

def export(workdir, step: int, params: PyTree, model_state: PyTree,
           config: ml_collections.ConfigDict, files: dict[str, str] | None = None) -> str:
  """Writes WORKDIR/export (params, model state, config, assets) for sampling.

  Collective: every process calls it; process 0 writes the small files.
  `meta.json` is removed first and written last, so it only ever names a
  complete export.
  """
  root = workdir_path(workdir) / EXPORT
  meta = root / "meta.json"
  if jax.process_index() == 0:
    for name, src in (files or {}).items():
      if not epath.Path(src).exists():
        raise UserError(f"export file {name!r} not found: {src}")
    if meta.exists():
      meta.unlink()
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(root / "params", params, force=True)
  if jax.tree.leaves(model_state):
    checkpointer.save(root / "model_state", model_state, force=True)
  checkpointer.wait_until_finished()
  checkpointer.close()
  if jax.process_index() == 0:
    save_config(root, config)
    for name, src in (files or {}).items():
      (root / "assets").mkdir(parents=True, exist_ok=True)
      epath.Path(src).copy(root / "assets" / name, overwrite=True)
    meta.write_text(json.dumps({"step": int(step)}))
  return str(root)


def export_step(workdir) -> int | None:
  """The step of WORKDIR's complete export, None if there is none."""
  path = workdir_path(workdir) / EXPORT / "meta.json"
  if not path.exists():
    return None
  return int(json.loads(path.read_text())["step"])


def _checkpoint_steps(workdir) -> list[int]:
  root = workdir_path(workdir) / CHECKPOINTS
  if not root.is_dir():
    return []
  return sorted(int(d.name) for d in root.iterdir()
                if d.name.isdigit() and (d / STATE_ITEM).exists())


def _restore_tree(path: epath.Path, shardings, subtree: str | None) -> PyTree:
  """Restores (the `subtree` item of) an Orbax PyTree checkpoint onto `shardings`:
  None = replicated on all devices, one Sharding for every leaf, or a tree."""
  handler = ocp.PyTreeCheckpointHandler()
  metadata = handler.metadata(path).tree
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


def load_params(workdir, step: int | None = None, shardings=None) -> PyTree:
  """Params only (no optimizer state) of a run, placed on `shardings`.

  `step=None`: the newest of the export and the latest checkpoint; an int:
  that checkpoint step. `shardings`: None (replicated on all devices), one
  `jax.sharding.Sharding` for every leaf, or a tree of them like the params.
  """
  root = workdir_path(workdir)
  steps = _checkpoint_steps(workdir)
  exported = export_step(workdir)
  if step is None:
    if exported is not None and (not steps or exported >= steps[-1]):
      return _restore_tree(root / EXPORT / "params", shardings, None)
    if not steps:
      raise UserError(f"no checkpoint or export in {workdir}")
    step = steps[-1]
  if step not in steps:
    if step == exported:
      return _restore_tree(root / EXPORT / "params", shardings, None)
    raise UserError(f"no checkpoint for step {step} in {workdir} (have: {steps or 'none'})")
  return _restore_tree(root / CHECKPOINTS / str(step) / STATE_ITEM, shardings, "params")
