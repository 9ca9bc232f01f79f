"""Shared by the trainer tests: toy configs, metrics.jsonl readers, `vlgen
train` subprocesses, and a persistent XLA compilation cache so repeated runs
of the same program (subprocesses, resumed runs) compile once."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from typing import Mapping

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
TOY = str(REPO_ROOT / "configs" / "toy.py")

# Small enough to compile in seconds on a busy 2-core box.
FAST = {"model.num_layers": 1, "eval_every": 0, "log_every": 1}


def toy_config(overrides: Mapping[str, object] | None = None, **kwargs):
  """configs/toy.py with `FAST` and then the given overrides ("a.b": value)."""
  from vlgen_jax.config import load_config
  items = {**FAST, **(overrides or {}), **kwargs}
  return load_config(TOY, [f"--config.{k}={_literal(v)}" for k, v in items.items()])


def override_args(overrides: Mapping[str, object]) -> list[str]:
  return [f"--config.{k}={_literal(v)}" for k, v in {**FAST, **overrides}.items()]


def _literal(v) -> str:
  return repr(v) if isinstance(v, (tuple, list)) else str(v)


def read_metrics(workdir) -> list[dict]:
  path = pathlib.Path(workdir) / "metrics.jsonl"
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def train_losses(workdir) -> dict[int, float]:
  """step -> train/loss, exactly as logged (json floats round-trip exactly)."""
  return {m["step"]: m["train/loss"] for m in read_metrics(workdir) if "train/loss" in m}


def subprocess_env(cache_dir, devices: int = 8, extra: Mapping[str, str] | None = None) -> dict:
  env = dict(os.environ)
  env.update({
      # The suite's XLA flags with this device count (the last one wins).
      "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}",
      "JAX_PLATFORMS": "cpu",
      "CUDA_VISIBLE_DEVICES": "",
      "TF_CPP_MIN_LOG_LEVEL": "2",
      "JAX_COMPILATION_CACHE_DIR": str(cache_dir),
      "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
      "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
      "PYTHONPATH": str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
  })
  env.update(extra or {})
  return env


def train_command(workdir, overrides: Mapping[str, object], config: str = TOY) -> list[str]:
  return [sys.executable, "-m", "vlgen_jax.cli", "train", "--config", config,
          "--workdir", str(workdir), *override_args(overrides)]


def start_train(workdir, overrides, env) -> subprocess.Popen:
  return subprocess.Popen(train_command(workdir, overrides), env=env, cwd=REPO_ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_train(workdir, overrides, env, timeout: float = 300) -> subprocess.CompletedProcess:
  return subprocess.run(train_command(workdir, overrides), env=env, cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def compile_cache_dir():
  """The session's persistent compilation cache (tests/conftest.py)."""
  return pathlib.Path(os.environ["JAX_COMPILATION_CACHE_DIR"])


def demo_t2i_args(demo, workdir, *extra) -> list[str]:
  """`vlgen train` args of the tiny demo's t2i model (configs/demo_tiny.py
  overrides of configs/t2i_shapes.py) on that demo's token dataset."""
  from vlgen_jax.config import load_config
  recipe = load_config(str(REPO_ROOT / "configs" / "demo_tiny.py"), [])
  return ["train", "--config", str(REPO_ROOT / "configs" / "t2i_shapes.py"),
          "--workdir", str(workdir),
          f"--config.data.data_dir={demo / 'tokens'}",
          f"--config.data.tokenizer={demo / 'text_tokenizer.model'}",
          *[f"--config.{o}" for o in recipe.t2i.overrides], *extra]
