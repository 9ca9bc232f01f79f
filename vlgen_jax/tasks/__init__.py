"""Tasks: what the model-agnostic trainer trains (model, loss, metrics, evals).

One module per family; `config.task` names one entry of `TASKS`. The trainer,
checkpointing, sharding and CLI only ever see the `Task` protocol
(`vlgen_jax/tasks/base.py`).
"""
from __future__ import annotations

import importlib

import ml_collections

from vlgen_jax.errors import UserError
from vlgen_jax.tasks.base import Task

# config.task -> "module:Class". Modules are imported on use, so a task's
# dependencies (tfds, the VQ, ...) load only when that task runs.
TASKS = {
    "t2i": "vlgen_jax.tasks.t2i:TextToImageTask",
    "vq": "vlgen_jax.tasks.vq:VQTask",
    "toy": "vlgen_jax.tasks.toy:ToyTask",
    "caption": "vlgen_jax.tasks.caption:CaptionTask",
}

# config.task -> "module:function" returning the task's default config: the
# one home of every field's default, which `complete_config` reads to bring a
# run saved by an older version up to the current fields.
TASK_DEFAULTS = {
    "t2i": "vlgen_jax.tasks.t2i_defaults:t2i_config",
    "vq": "vlgen_jax.vq.defaults:vq_config",
    "caption": "vlgen_jax.tasks.t2i_defaults:caption_config",
}


def _load(target: str):
  module_name, _, name = target.partition(":")
  return getattr(importlib.import_module(module_name), name)


def build_task(config: ml_collections.ConfigDict) -> Task:
  name = config.get("task", None)
  if name not in TASKS:
    raise UserError(f"unknown config.task {name!r}; expected one of {sorted(TASKS)}")
  return _load(TASKS[name])(config)


def complete_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` with every field its task's defaults have and it lacks added
  (a run saved before the field existed behaves as the default says);
  fields it has are never changed. Unknown tasks are returned as they are."""
  name = config.get("task", None)
  if name not in TASK_DEFAULTS:
    return config
  _fill(config, _load(TASK_DEFAULTS[name])())
  return config


def _fill(config: ml_collections.ConfigDict, defaults: ml_collections.ConfigDict) -> None:
  with config.unlocked():
    for key, value in defaults.items():
      if key not in config:
        config[key] = value
      elif (isinstance(value, ml_collections.ConfigDict)
            and isinstance(config[key], ml_collections.ConfigDict)):
        _fill(config[key], value)
