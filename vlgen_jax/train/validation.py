"""Config checks that run before anything is compiled, each failing with one
clear line (UserError). Unknown keys given on the command line are caught
when the override is applied (vlgen_jax/config.py)."""
from __future__ import annotations

import ml_collections

from vlgen_jax.errors import UserError
from vlgen_jax.train import numerics
from vlgen_jax.train.defaults import trainer_config
from vlgen_jax.train.optimizer import OPTIMIZERS, SCHEDULES

NAN_POLICIES = ("skip", "halt")
MAX_STEPS = 2**31 - 1
FLOAT32_MAX = 3.4028234663852886e38


def check_types(config, defaults, where: str = "config") -> None:
  """Every field `defaults` defines is present in `config` with a compatible
  type (an int for an int, a number for a float, ...): a config file built
  without the defaults, or a hand-edited config.json, fails here in one line."""
  for key, default in defaults.items():
    name = f"{where}.{key}"
    if key not in config:
      raise UserError(f"{name} is missing; build configs on "
                      "vlgen_jax.train.defaults.trainer_config()")
    value = config[key]
    if isinstance(default, (dict, ml_collections.ConfigDict)):
      if not isinstance(value, (dict, ml_collections.ConfigDict)):
        raise UserError(f"{name} must be a group of fields, got {value!r}")
      if key != "optimizers":  # keyed by task labels: checked below
        check_types(value, default, name)
      continue
    expected = _expected_type(default)
    if expected and not isinstance(value, expected[0]) or (
        isinstance(value, bool) and not isinstance(default, bool)):
      raise UserError(f"{name} must be {expected[1] if expected else type(default).__name__}, "
                      f"got {value!r}")


def _expected_type(default):
  if isinstance(default, bool):
    return bool, "true or false"
  if isinstance(default, int):
    return int, "an integer"
  if isinstance(default, float):
    return (int, float), "a number"
  if isinstance(default, str):
    return str, "a string"
  if isinstance(default, (tuple, list)):
    return (tuple, list), "a sequence"
  return None


def check_config(config) -> None:
  """Static checks of the trainer fields (no devices needed)."""
  check_types(config, trainer_config())
  if not config.get("task"):
    raise UserError("config.task is empty; set it to a task name (e.g. toy, t2i, vq)")
  for key in ("total_steps", "batch_size", "micro_batches", "log_every"):
    if int(config[key]) < 1:
      raise UserError(f"config.{key} must be >= 1, got {config[key]}")
  for key in ("eval_every", "checkpoint_every", "eval_steps", "max_to_keep", "eval_batch_size"):
    if int(config[key]) < 0:
      raise UserError(f"config.{key} must be >= 0, got {config[key]}")
  if int(config.total_steps) > MAX_STEPS:  # the step counter is int32
    raise UserError(f"config.total_steps must be <= {MAX_STEPS}, got {config.total_steps}")
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
  if "learning_rate" in opt and not 0 <= float(opt.learning_rate) <= FLOAT32_MAX:
    # The update is computed in float32: a larger rate makes every step inf.
    raise UserError(f"{where}.learning_rate must be a finite number >= 0 (at most {FLOAT32_MAX:.3g}), "
                    f"got {opt.learning_rate}")


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
