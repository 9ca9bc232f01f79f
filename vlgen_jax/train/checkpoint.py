"""Orbax checkpoints of the train state and the data iterator, and the
params-only export for sampling.

Layout under WORKDIR:
  config.json                 the run's config (written at its first start)
  config_history/<n>-step<s>.json  the config of each start (n-th, at step s)
  checkpoints/<step>/state    TrainState (Orbax PyTree: step, params, opt_state,
                              model_state, rng, skipped_steps)
  checkpoints/<step>/data     Grain iterator state, one JSON file per process
  export/params               params only (Orbax PyTree), for sampling
  export/model_state          the Task's non-gradient state, when it has any
  export/config.json, export/meta.json (step), export/assets/*  (Task.export_files;
                                                  files or directories)

Checkpoints restore onto any mesh: the caller passes the target shardings.

Failure handling (docs/reliability.md): Orbax writes a step into
`<step>.orbax-checkpoint-tmp-*` and renames it when complete (on GCS: a
`commit_success.txt` marker), so a save cut short by a crash is never listed as
a step; the next start warns about such partial directories and Orbax removes
them. `restore_latest` restores the newest step that reads back cleanly:
damaged steps (truncated/missing files) are skipped with a warning and moved
to WORKDIR/corrupt_checkpoints/; a step whose arrays do not match the config's
shapes is a `UserError` naming the first mismatched path.
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import sys
import time
from typing import Any, Iterator

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.sharding import NamedSharding, PartitionSpec as P

from vlgen_jax import tasks
from vlgen_jax.errors import UserError
from vlgen_jax.train.optimizer import path_name
from vlgen_jax.train.step import TrainState

PyTree = Any
CHECKPOINTS = "checkpoints"
EXPORT = "export"
STATE_ITEM = "state"
DATA_ITEM = "data"
CORRUPT = "corrupt_checkpoints"  # where unusable steps are moved, next to checkpoints/


class UnusableCheckpoint(Exception):
  """A checkpoint step whose files cannot be read back (damaged or missing)."""


def _grain_checkpoint():
  import grain  # Grain's Orbax handler for iterator state (per-process JSON).
  return grain.checkpoint


class Checkpointer:
  """Saves and restores (TrainState, data iterator) pairs under WORKDIR/checkpoints.

  `slow_save_seconds` (fault injection, config.debug): every async save waits
  this long after writing its files and before its atomic commit.
  """

  def __init__(self, workdir, *, max_to_keep: int, async_save: bool = True,
               slow_save_seconds: float = 0.0):
    self.workdir = workdir_path(workdir)
    self.directory = self.workdir / CHECKPOINTS
    self._warn_partial_saves()
    async_options = None
    if slow_save_seconds > 0 and async_save:
      # Runs in Orbax's commit thread after the handlers finalized, before the
      # rename that commits the step.
      async_options = ocp.AsyncOptions(
          post_finalization_callback=functools.partial(time.sleep, float(slow_save_seconds)))
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep or None, create=True, enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True, async_options=async_options)
    self.manager = ocp.CheckpointManager(self.directory, item_names=(STATE_ITEM, DATA_ITEM),
                                         options=options)

  def _warn_partial_saves(self) -> None:
    """Names the saves a crash cut short (Orbax removes them when the manager opens)."""
    if jax.process_index() != 0 or not self.directory.is_dir():
      return
    for tmp in ocp.path.step.all_temporary_paths(self.directory):
      warn(f"ignoring partial checkpoint {tmp.get()} (its save never completed, e.g. the run "
           "was killed while saving); it is removed")

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
    with _storage_errors():  # a previous async save's failure shows here
      return self.manager.save(step, args=args, force=True)

  def restore(self, step: int, target: TrainState, data_iter: Iterator) -> TrainState:
    """Restores `step` onto `target`'s shardings (ShapeDtypeStructs) and sets
    `data_iter` to the saved position of this process's data.

    Raises UserError if the step does not fit `target` or this process count,
    UnusableCheckpoint (or the storage layer's error) if its files are damaged.
    """
    self.check_compatible(step, target)
    gc = _grain_checkpoint()
    data_dir = self.directory / str(step) / DATA_ITEM
    name = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    if not (data_dir / name).exists():
      saved = sorted(f.name for f in data_dir.iterdir() if f.name.startswith("process_")) \
          if data_dir.is_dir() else []
      if not saved:
        raise UnusableCheckpoint(f"no data iterator state in {step}/{DATA_ITEM}")
      raise UserError(f"checkpoint step {step} has data iterator state {saved}, none for this "
                      f"process ({name}); resume with the same number of processes")
    args = ocp.args.Composite(**{
        STATE_ITEM: ocp.args.StandardRestore(target.to_dict()),
        DATA_ITEM: gc.CheckpointRestore(data_iter),
    })
    restored = self.manager.restore(step, args=args)
    return TrainState.from_dict(dict(restored[STATE_ITEM]))

  def check_compatible(self, step: int, target: TrainState) -> None:
    """UserError naming the first array whose path, shape or dtype in `step`
    differs from `target` (params first); UnusableCheckpoint if the step's
    metadata cannot be read."""
    path = self.directory / str(step) / STATE_ITEM
    try:
      saved = ocp.PyTreeCheckpointHandler().metadata(path).tree
    except Exception as e:  # pylint: disable=broad-except  (any unreadable metadata)
      raise UnusableCheckpoint(f"unreadable array metadata ({_describe(e, 10_000)})") from e
    problems = compare_trees(saved, target.to_dict())
    if problems:
      more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
      raise UserError(
          f"checkpoint step {step} in {self.directory} does not match the config: "
          f"{problems[0]}{more}; resume with the run's own config ({self.workdir / 'config.json'}) "
          f"or start a new --workdir")

  def restore_latest(self, target: TrainState, data_iter: Iterator
                     ) -> tuple[int, TrainState] | tuple[None, None]:
    """(step, state) of the newest checkpoint that restores cleanly, or
    (None, None) when there is no checkpoint.

    Unusable steps are skipped with a warning and, once an older one
    restored, moved to WORKDIR/corrupt_checkpoints/ (so the run can write
    those step numbers again). No usable step at all is a UserError; so is a
    step that does not match the config (that is not damage: every step of
    the run would fail the same way).
    """
    failures = []
    steps = sorted(self.all_steps(), reverse=True)
    if steps:
      _ignore_abandoned_reads()
    for step in steps:
      error = None
      try:
        state = self.restore(step, target, data_iter)
      except (UserError, MemoryError):
        raise
      except Exception as e:  # pylint: disable=broad-except  (damage shows as any error)
        # Paths relative to checkpoints/: short enough to list several.
        error = _describe(e, strip=f"{self.directory}/")
      error = _agree_on_error(error)
      if error is None:
        if failures:
          self._set_aside([s for s, _ in failures])
        return step, state
      failures.append((step, error))
      warn(f"checkpoint step {step} in {self.directory} is unusable ({error}); "
           "trying an older one")
    if failures:
      listed = "; ".join(f"step {s}: {_describe(e, 120)}" for s, e in failures)
      raise UserError(f"no usable checkpoint in {self.directory} ({listed}); move that directory "
                      "aside to start the run from scratch")
    return None, None

  def _set_aside(self, steps: list[int]) -> None:
    """Moves unusable steps out of Orbax's sight, keeping them for inspection."""
    if jax.process_index() == 0:
      root = self.workdir / CORRUPT
      root.mkdir(parents=True, exist_ok=True)
      for step in steps:
        src = self.directory / str(step)
        dst, n = root / str(step), 0
        while dst.exists():
          n += 1
          dst = root / f"{step}.{n}"
        try:
          src.rename(dst)
          warn(f"moved unusable checkpoint step {step} to {dst}")
        except Exception as e:  # pylint: disable=broad-except  (stores without directory rename)
          src.rmtree()
          warn(f"deleted unusable checkpoint step {step} ({src}; could not move it: {e})")
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("vlgen_set_aside_checkpoints")
    self.manager.reload()

  def wait(self) -> None:
    """Blocks until pending async saves are committed."""
    with _storage_errors():
      self.manager.wait_until_finished()

  def close(self) -> None:
    with _storage_errors():
      self.manager.close()


def warn(message: str) -> None:
  """A one-line `warning: ...` on stderr (process 0)."""
  if jax.process_index() == 0:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _describe(e: BaseException | str, limit: int = 200, strip: str = "") -> str:
  """`Type: first line of the message` (no type for our own) without `strip`,
  at most `limit` characters."""
  lines = str(e).strip().splitlines()
  text = lines[0].replace(strip, "") if lines and strip else (lines[0] if lines else "")
  if isinstance(e, BaseException) and not isinstance(e, UnusableCheckpoint):
    text = f"{type(e).__name__}: {text}".rstrip(": ")
  return text if len(text) <= limit else text[:limit - 3] + "..."


# TensorStore reports an OS error inside its message: `... Failed writing:
# "PATH": ... [os_error_code='28']`.
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")
_FAILED_PATH = re.compile(r'Failed (?:writing|to write|opening|reading)[^"]*"([^"]+)"')


def storage_os_error(e: BaseException) -> OSError | None:
  """The OSError (errno, path) behind a failed Orbax/TensorStore write, if
  the failure came from the OS (disk full, read-only, permission...)."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno is not None:
      return e
    code = _OS_ERROR_CODE.search(str(e))
    if code:
      path = _FAILED_PATH.search(str(e))
      number = int(code.group(1))
      return OSError(number, os.strerror(number), path.group(1) if path else None)
    e = e.__cause__ or e.__context__
  return None


class _DropStorageErrorLogs(logging.Filter):
  """Orbax's background threads log each failed write (and asyncio each
  unretrieved one) with a traceback; the same failure is raised in the main
  thread at the next save or wait and reported there as one line."""

  def filter(self, record):
    return not _OS_ERROR_CODE.search(record.getMessage() + str(record.exc_info and record.exc_info[1]))


_LOG_FILTER = _DropStorageErrorLogs()


@contextlib.contextmanager
def _storage_errors():
  """Re-raises an OS-level failure of a checkpoint write as that OSError
  (`vlgen` prints it as one line); other errors pass unchanged."""
  for name in ("asyncio", "absl"):
    if _LOG_FILTER not in logging.getLogger(name).filters:
      logging.getLogger(name).addFilter(_LOG_FILTER)
  _ignore_abandoned_reads()  # failed writes end in the same closed-loop callbacks
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except  (re-raised unless it is the OS's)
    error = storage_os_error(e)
    if error is None or error is e:
      raise
    # Orbax's threads still hold the failed writes; the process should exit
    # without running their teardown (see vlgen_jax/cli.py).
    error.abandoned_threads = True
    raise error from e


class _AbandonedReadFilter(logging.Filter):
  """Drops asyncio's "Task exception was never retrieved" report of a
  TensorStore read (its exception names TensorStore's spec or OCDBT)."""

  def filter(self, record: logging.LogRecord) -> bool:
    if not record.getMessage().startswith("Task exception was never retrieved"):
      return True
    text = f"{record.getMessage()} {record.exc_info[1] if record.exc_info else ''}".lower()
    return not ("tensorstore" in text or "ocdbt" in text)


def _ignore_abandoned_reads() -> None:
  """When a restore fails part-way (damaged files), TensorStore still
  completes the reads Orbax gave up on. Their callbacks hit Orbax's closed
  event loop, and Python would print each as an "Exception ignored" traceback
  (failed writes do the same). A read task that failed after Orbax stopped
  waiting is also logged, with a traceback, by asyncio when it is collected.
  The restore's own error already says what is wrong, so this drops exactly
  those two reports (installed once, before the first restore attempt)."""
  if getattr(sys.unraisablehook, "_vlgen", False):
    return
  previous = sys.unraisablehook

  def hook(unraisable):
    e = unraisable.exc_value
    if isinstance(e, RuntimeError) and str(e) == "Event loop is closed":
      return
    previous(unraisable)

  hook._vlgen = True  # pylint: disable=protected-access
  sys.unraisablehook = hook
  logging.getLogger("asyncio").addFilter(_AbandonedReadFilter())


def _agree_on_error(error: str | None) -> str | None:
  """Multi-process: a step is usable only if every process restored it."""
  if jax.process_count() == 1:
    return error
  from jax.experimental import multihost_utils
  failed = multihost_utils.process_allgather(np.asarray(error is not None, np.int32))
  bad = [i for i, f in enumerate(np.asarray(failed).reshape(-1)) if f]
  if error is None and bad:
    return f"process(es) {bad} could not read it"
  return error


def compare_trees(saved: PyTree, target: PyTree) -> list[str]:
  """Differences between a checkpoint's array metadata and a target tree
  (ShapeDtypeStructs), params first: one readable line each."""
  def flat(tree):
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {path_name(p): (tuple(v.shape), str(v.dtype)) for p, v in leaves}

  have, want = flat(saved), flat(target)
  order = lambda p: (0 if p.startswith("params/") else 1, p)  # noqa: E731
  problems = []
  for p in sorted(want, key=order):
    if p not in have:
      problems.append(f"{p} {_fmt(want[p])} is in the config but not in the checkpoint")
    elif have[p][0] != want[p][0]:
      problems.append(f"{p} has shape {have[p][0]} in the checkpoint but {want[p][0]} in the "
                      "config")
    elif have[p][1] != want[p][1]:
      problems.append(f"{p} has dtype {have[p][1]} in the checkpoint but {want[p][1]} in the "
                      "config")
  for p in sorted(set(have) - set(want), key=order):
    problems.append(f"{p} {_fmt(have[p])} is in the checkpoint but not in the config")
  return problems


def _fmt(shape_dtype) -> str:
  shape, dtype = shape_dtype
  return f"({dtype} {shape})"


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
  tmp.parent.mkdir(parents=True, exist_ok=True)
  try:
    tmp.write_text(config.to_json(indent=2, sort_keys=True))
    tmp.replace(root / name)
  finally:
    if tmp.exists():  # a failed write (e.g. disk full) leaves no litter
      tmp.unlink()


CONFIG_HISTORY = "config_history"


def record_config(workdir, config: ml_collections.ConfigDict, start_step: int) -> str | None:
  """Records this start's config: `config.json` is the run's first config
  (written once, never replaced), and every start adds
  `config_history/<n>-step<start>.json`. Returns the changed top-level
  fields against config.json, comma-separated, if any (process 0 only)."""
  if jax.process_index() != 0:
    return None
  root = workdir_path(workdir)
  history = root / CONFIG_HISTORY
  history.mkdir(parents=True, exist_ok=True)
  n = len([p for p in history.iterdir() if p.name.endswith(".json")])
  save_config(workdir, config, f"{CONFIG_HISTORY}/{n:03d}-step{start_step}.json")
  first = root / "config.json"
  if not first.exists():
    save_config(workdir, config)
    return None
  try:
    before = json.loads(first.read_text())
  except ValueError:
    before = {}
  now = json.loads(config.to_json())
  changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
  return ", ".join(changed) or None


def load_config(workdir) -> ml_collections.ConfigDict:
  """The config of a run: `export/config.json`, else `config.json` (a
  damaged one is skipped with a warning), with fields added since the run
  was saved filled in from its task's defaults."""
  root = workdir_path(workdir)
  problems = []
  for path in (root / EXPORT / "config.json", root / "config.json"):
    if path.exists():
      try:
        config = ml_collections.ConfigDict(json.loads(path.read_bytes().decode("utf-8")))
      except (ValueError, TypeError) as e:  # incl. UnicodeDecodeError
        problems.append(f"{path}: {_describe(e, 120)}")
        warn(f"{path} is unusable ({_describe(e, 120)}); trying the next config")
      else:
        return tasks.complete_config(config)
  if problems:
    raise UserError(f"no usable config.json in {workdir} ({'; '.join(problems)})")
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
      _copy_tree(epath.Path(src), root / "assets" / name)
    meta.write_text(json.dumps({"step": int(step)}))
  return str(root)


def _copy_tree(src: epath.Path, dst: epath.Path) -> None:
  """Copies a file, or a directory recursively, replacing what is there."""
  if src.is_dir():
    if dst.exists():
      dst.rmtree()
    dst.mkdir(parents=True)
    for path in src.iterdir():  # (epath has no recursive glob on gs://)
      _copy_tree(path, dst / path.name)
    return
  dst.parent.mkdir(parents=True, exist_ok=True)
  src.copy(dst, overwrite=True)


def export_step(workdir) -> int | None:
  """The step of WORKDIR's complete export, None if there is none."""
  path = workdir_path(workdir) / EXPORT / "meta.json"
  if not path.exists():
    return None
  return int(json.loads(path.read_text())["step"])


def checkpoint_steps(workdir) -> list[int]:
  """Steps of WORKDIR's complete checkpoints (their train state saved), ascending."""
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


def parse_init_from(spec: str) -> tuple[str, int | None]:
  """`RUN` or `RUN:STEP` -> (RUN, STEP or None)."""
  run, sep, tail = str(spec).rpartition(":")
  if sep and tail.isdigit() and run:
    return run, int(tail)
  return str(spec), None


def load_init_params(spec: str, abstract_params: PyTree, shardings) -> PyTree:
  """The params of `config.init_from` (`RUN[:STEP]`) placed on `shardings`,
  after checking them against `abstract_params` (the config's model): a
  mismatch is one UserError naming the first mismatched param."""
  run, step = parse_init_from(spec)
  root = workdir_path(run)
  steps, exported = checkpoint_steps(run), export_step(run)
  if not root.is_dir() or (not steps and exported is None):
    raise UserError(f"config.init_from={spec}: no trained run (checkpoints or export) in {run}")
  if step is None:
    use_export = exported is not None and (not steps or exported >= steps[-1])
    step = exported if use_export else steps[-1]
  elif step in steps:
    use_export = False
  elif step == exported:
    use_export = True
  else:
    raise UserError(f"config.init_from={spec}: no checkpoint for step {step} in {run} "
                    f"(have: {steps or 'none'}{f', export {exported}' if exported else ''})")
  path = root / EXPORT / "params" if use_export else root / CHECKPOINTS / str(step) / STATE_ITEM
  saved = ocp.PyTreeCheckpointHandler().metadata(path).tree
  if not use_export:
    saved = saved["params"]
  problems = compare_trees(saved, abstract_params)
  if problems:
    raise UserError(f"config.init_from={spec} (step {step}) does not fit this config's model: "
                    f"{problems[0]}" + (f" (and {len(problems) - 1} more)"
                                        if len(problems) > 1 else ""))
  return (_restore_tree(path, shardings, None) if use_export
          else _restore_tree(path, shardings, "params"))


def load_train_state(workdir, step: int, shardings=None) -> dict:
  """The whole saved TrainState of checkpoint `step` as a dict (step, params,
  opt_state, model_state, rng, skipped_steps), e.g. to inspect a run;
  `shardings` as in `load_params`."""
  path = workdir_path(workdir) / CHECKPOINTS / str(step) / STATE_ITEM
  if not path.exists():
    raise UserError(f"no checkpoint for step {step} in {workdir} "
                    f"(have: {checkpoint_steps(workdir) or 'none'})")
  return _restore_tree(path, shardings, None)


def load_params(workdir, step: int | None = None, shardings=None) -> PyTree:
  """Params only (no optimizer state) of a run, placed on `shardings`.

  `step=None`: the newest usable of the export and the checkpoints (a damaged
  one is skipped with a warning, as training's restore does); an int: that
  checkpoint step. `shardings`: None (replicated on all devices), one
  `jax.sharding.Sharding` for every leaf, or a tree of them like the params.
  """
  if step is None:
    return newest_usable_params(workdir, shardings)[1]
  root = workdir_path(workdir)
  steps = checkpoint_steps(workdir)
  if step not in steps:
    if step == export_step(workdir):
      return _restore_tree(root / EXPORT / "params", shardings, None)
    raise UserError(f"no checkpoint for step {step} in {workdir} (have: {steps or 'none'})")
  return _restore_tree(root / CHECKPOINTS / str(step) / STATE_ITEM, shardings, "params")


def newest_usable_params(workdir, shardings=None) -> tuple[int, PyTree]:
  """(step, params) of the newest export or checkpoint that reads back
  cleanly. Unusable ones are skipped with a warning (and left in place: this
  only reads); none usable is a UserError naming each one's problem."""
  root = workdir_path(workdir)
  candidates = [(s, root / CHECKPOINTS / str(s) / STATE_ITEM, "params", f"checkpoint step {s}")
                for s in checkpoint_steps(workdir)]
  try:
    exported = export_step(workdir)
  except (ValueError, KeyError, OSError) as e:  # a damaged meta.json
    exported = None
    warn(f"export in {root / EXPORT} is unusable ({_describe(e)}); trying the checkpoints")
  if exported is not None:
    # The export wins a tie: it is what the run handed on.
    candidates.append((exported + 0.5, root / EXPORT / "params", None, f"export (step {exported})"))
  if not candidates:
    raise UserError(f"no checkpoint or export in {workdir}")
  _ignore_abandoned_reads()
  failures = []
  for order, path, subtree, what in sorted(candidates, key=lambda c: c[0], reverse=True):
    try:
      params = _restore_tree(path, shardings, subtree)
    except (UserError, MemoryError):
      raise
    except Exception as e:  # pylint: disable=broad-except  (damage shows as any error)
      failures.append(f"{what}: {_describe(e, 120, strip=f'{root}/')}")
      warn(f"{what} in {workdir} is unusable ({_describe(e, strip=f'{root}/')}); trying an older "
           "one")
      continue
    return int(order), params
  raise UserError(f"no usable params in {workdir} ({'; '.join(failures)})")
