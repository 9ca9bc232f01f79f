"""Each config error fails with one clear line, before anything compiles."""
from __future__ import annotations

import contextlib

import jax
import pytest

from trainer_helpers import TOY, toy_config
from vlgen_jax import cli
from vlgen_jax.errors import UserError
from vlgen_jax.train.trainer import train


@contextlib.contextmanager
def count_compiles():
  """Counts XLA backend compilations inside the block, and programs loaded
  from the persistent compilation cache instead (tests/conftest.py)."""
  from jax._src.dispatch import BACKEND_COMPILE_EVENT
  events = []

  def listener(name, duration, **kwargs):
    if name == BACKEND_COMPILE_EVENT:
      events.append(duration)

  def hit_listener(name, **kwargs):
    if name == "/jax/compilation_cache/cache_hits":
      events.append(0.0)

  jax.monitoring.register_event_duration_secs_listener(listener)
  jax.monitoring.register_event_listener(hit_listener)
  try:
    yield events
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
    jax.monitoring.unregister_event_listener(hit_listener)


CASES = {
    "mesh_product": ({"mesh.data": 3},
                     "config.mesh data=3,fsdp=1,tensor=1 needs 3 devices, but 8 devices are available"),
    "mesh_fill": ({"mesh.data": -1, "mesh.fsdp": 3},
                  "config.mesh data=-1,fsdp=3,tensor=1: 8 devices are not divisible by 3"),
    "batch_vs_data_parallel": (
        {"batch_size": 12, "mesh.data": 2, "mesh.fsdp": 4},
        "config.batch_size=12 is not divisible by the data-parallel size 8 (mesh data*fsdp)"),
    "batch_vs_micro_batches": (
        {"batch_size": 16, "micro_batches": 3, "mesh.data": 2, "mesh.tensor": 4},
        "config.batch_size=16 is not divisible by config.micro_batches=3"),
    "micro_batch_vs_data_parallel": (
        {"batch_size": 16, "micro_batches": 4, "mesh.data": 8},
        "config.batch_size=16 / micro_batches=4 = 4 per micro-batch is not divisible by the "
        "data-parallel size 8"),
    "missing_dataset": ({"data.dir": "/nonexistent/toy_data"},
                        "dataset not found: /nonexistent/toy_data/train.npy"),
    "missing_eval_split": ({"eval_every": 5, "eval_split": "test"},
                           "toy synthetic data has splits ['train', 'validation'], not 'test'"),
    "param_not_divisible": ({"mesh.data": 1, "mesh.tensor": 8},
                            "param block_0/attention_out (4, 4, 16): dim 0 (4) does not split "
                            "over mesh axes tensor=8"),
    "nan_policy": ({"nan_policy": "ignore"}, "config.nan_policy must be one of skip, halt"),
    "optimizer": ({"optimizer.name": "lamb"},
                  "config.optimizer.name must be one of adamw, adafactor, sgd, got: lamb"),
    "schedule": ({"optimizer.schedule": "step"}, "config.optimizer.schedule must be one of"),
    "remat": ({"remat": "some"}, "config.remat must be one of none, full, dots, dots_no_batch"),
    "dtype": ({"dtype": "int8"}, "config.dtype must be auto, float32, bfloat16 or float16"),
    "steps": ({"total_steps": 0}, "config.total_steps must be >= 1"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_config_error_is_one_line_before_compiling(name, tmp_path):
  overrides, message = CASES[name]
  config = toy_config(overrides)
  with count_compiles() as compiles, pytest.raises(UserError) as e:
    train(config, str(tmp_path))
  assert message in str(e.value)
  assert "\n" not in str(e.value)
  assert compiles == [], f"compiled {len(compiles)} programs before failing"


def test_optimizer_labels_without_config_entry(tmp_path):
  config = toy_config()
  with config.unlocked():
    config.optimizers = {"body": {"learning_rate": 1e-3}}
  with count_compiles() as compiles, pytest.raises(UserError) as e:
    train(config, str(tmp_path))
  assert "the task's optimizer labels ['embeddings'] have no entry in config.optimizers" in str(e.value)
  assert compiles == []


def test_unknown_optimizers_field(tmp_path):
  config = toy_config()
  with config.unlocked():
    config.optimizers = {"body": {"lr": 1e-3}, "embeddings": {}}
  with pytest.raises(UserError, match="unknown config key: optimizers.body.lr"):
    train(config, str(tmp_path))


def test_cli_unknown_key_and_mesh_error_print_one_line(tmp_path, capsys):
  rc = cli.main(["train", "--config", TOY, "--workdir", str(tmp_path), "--config.nope=1"])
  err = capsys.readouterr().err
  assert rc == 2 and err == "error: unknown config key: nope\n"
  rc = cli.main(["train", "--config", TOY, "--workdir", str(tmp_path), "--config.mesh.data=5"])
  err = capsys.readouterr().err
  assert rc == 2
  assert err == ("error: config.mesh data=5,fsdp=1,tensor=1 needs 5 devices, "
                 "but 8 devices are available\n")
