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


def build_task(config: ml_collections.ConfigDict) -> Task:
  name = config.get("task", None)
  if name not in TASKS:
    raise UserError(f"unknown config.task {name!r}; expected one of {sorted(TASKS)}")
  module_name, _, cls_name = TASKS[name].partition(":")
  module = importlib.import_module(module_name)
  return getattr(module, cls_name)(config)
