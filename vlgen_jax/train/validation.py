"""Config checks that run before anything is compiled, each failing with one
clear line (UserError). Unknown keys given on the command line are caught
when the override is applied (vlgen_jax/config.py)."""
from __future__ import annotations

from vlgen_jax.errors import UserError
from vlgen_jax.train import numerics
from vlgen_jax.train.defaults import trainer_config
from vlgen_jax.train.optimizer import OPTIMIZERS, SCHEDULES

NAN_POLICIES = ("skip", "halt")


def check_config(config) -> None:
  """Static checks of the trainer fields (no devices needed)."""
  if not config.get("task"):
    raise UserError("config.task is empty; set it to a task name (e.g. toy, t2i, vq)")
  for key in ("total_steps", "batch_size", "micro_batches", "log_every"):
    if int(config[key]) < 1:
      raise UserError(f"config.{key} must be >= 1, got {config[key]}")
  for key in ("eval_every", "checkpoint_every", "eval_steps", "max_to_keep", "eval_batch_size"):
    if int(config[key]) < 0:
      raise UserError(f"config.{key} must be >= 0, got {config[key]}")
  if config.nan_policy not in NAN_POLICIES:
    raise UserError(f"config.nan_policy must be one of {', '.join(NAN_POLICIES)}, "
                    f"got: {config.nan_policy}")
  debug = config.get("debug", {}) or {}
  for key in ("sigterm_after_step", "nan_at_step", "slow_save_seconds"):
    if float(debug.get(key, 0)) < 0:
      raise UserError(f"config.debug.{key} must be >= 0, got {debug.get(key)}")
  numerics.remat_policy(config.remat)
  numerics.compute_dtype(config)
  known = set(trainer_config().optimizer.keys())
  _check_optimizer("config.optimizer", config.optimizer, known)
  for label, opt in config.optimizers.items():
    unknown = sorted(set(opt.keys()) - known)
    if unknown:
      raise UserError(f"unknown config key: optimizers.{label}.{unknown[0]} "
                      f"(optimizer fields: {', '.join(sorted(known))})")
    _check_optimizer(f"config.optimizers.{label}", opt, known)


def _check_optimizer(where: str, opt, known) -> None:
  name = opt.get("name", "adamw")
  if name not in OPTIMIZERS:
    raise UserError(f"{where}.name must be one of {', '.join(OPTIMIZERS)}, got: {name}")
  schedule = opt.get("schedule", "cosine")
  if schedule not in SCHEDULES:
    raise UserError(f"{where}.schedule must be one of {', '.join(SCHEDULES)}, got: {schedule}")
  if "learning_rate" in opt and float(opt.learning_rate) < 0:
    raise UserError(f"{where}.learning_rate must be >= 0, got {opt.learning_rate}")


def check_batch(config, *, data_parallel: int) -> None:
  """The global batch must split evenly over data-parallel shards and
  micro-batches (each micro-batch is spread over all shards)."""
  b, k = int(config.batch_size), int(config.micro_batches)
  if b % data_parallel:
    raise UserError(f"config.batch_size={b} is not divisible by the data-parallel size "
                    f"{data_parallel} (mesh data*fsdp)")
  if b % k:
    raise UserError(f"config.batch_size={b} is not divisible by config.micro_batches={k}")
  if (b // k) % data_parallel:
    raise UserError(f"config.batch_size={b} / micro_batches={k} = {b // k} per micro-batch is "
                    f"not divisible by the data-parallel size {data_parallel} (mesh data*fsdp)")
  eb = int(config.eval_batch_size) or b
  if int(config.eval_every) > 0 and eb % data_parallel:
    raise UserError(f"config.eval_batch_size={eb} is not divisible by the data-parallel size "
                    f"{data_parallel} (mesh data*fsdp)")
