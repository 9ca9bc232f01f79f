"""Loading `configs/*.py` files and applying `--config.a.b=value` overrides.

A config file is a python module with `get_config()` returning an
`ml_collections.ConfigDict`. Running it is running code the user chose (like
big_vision and MaxText configs); nothing else on any load path executes code.
An optional argument is passed as `path.py:arg` -> `get_config("arg")`.
"""
from __future__ import annotations

import ast
import importlib.util
import os
from typing import Any, Iterable

import ml_collections

from vlgen_jax.errors import UserError

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def resolve_config_path(path: str) -> str:
  """A path, or `configs/x.py`, `x.py`, `x` looked up in the project's configs/
  (so the shipped recipes work from any working directory)."""
  if os.path.exists(path):
    return path
  name = os.path.basename(path) if os.path.dirname(path) == "configs" else path
  for cand in (os.path.join(CONFIG_DIR, name), os.path.join(CONFIG_DIR, name + ".py")):
    if os.path.exists(cand):
      return cand
  raise UserError(f"config file not found: {path}")


def load_config_module(path: str):
  """The config file as a module (it is the user's own code, see module doc)."""
  path = resolve_config_path(path)
  module_name = "vlgen_config_" + os.path.splitext(os.path.basename(path))[0]
  module_spec = importlib.util.spec_from_file_location(module_name, path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module


def load_config(spec: str, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
  """Loads `path[:arg]` and applies `key=value` overrides (keys without `--config.`)."""
  path, _, arg = spec.partition(":")
  module = load_config_module(path)
  if not hasattr(module, "get_config"):
    raise UserError(f"config file {path} has no get_config()")
  config = module.get_config(arg) if arg else module.get_config()
  for item in overrides:
    apply_override(config, item)
  return config


def parse_value(text: str) -> Any:
  """Parses an override value as a python literal, else keeps it as a string."""
  try:
    return ast.literal_eval(text)  # Literals only: never evaluates code.
  except (ValueError, SyntaxError):
    return text


def apply_override(config: ml_collections.ConfigDict, item: str) -> None:
  """Applies `a.b.c=value`; unknown keys and wrong types are one-line errors."""
  if item.startswith("--"):
    item = item[2:]
  if item.startswith("config."):
    item = item[len("config."):]
  key, sep, raw = item.partition("=")
  if not sep:
    raise UserError(f"config override must look like --config.key=value, got: {item}")
  node = config
  parts = key.split(".")
  for i, part in enumerate(parts[:-1]):
    if part not in node:
      raise UserError(f"unknown config key: {'.'.join(parts[:i + 1])}")
    node = node[part]
  last = parts[-1]
  if not isinstance(node, (ml_collections.ConfigDict, dict)) or last not in node:
    raise UserError(f"unknown config key: {key}")
  old = node[last]
  value = parse_value(raw)
  if isinstance(old, bool):
    if isinstance(value, str) and value.lower() in ("true", "false"):
      value = value.lower() == "true"
    if not isinstance(value, bool):
      raise UserError(f"config key {key} expects true/false, got: {raw}")
  elif isinstance(old, int) and not isinstance(old, bool):
    if isinstance(value, float) and value.is_integer():
      value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
      raise UserError(f"config key {key} expects an integer, got: {raw}")
  elif isinstance(old, float):
    if isinstance(value, int) and not isinstance(value, bool):
      value = float(value)
    if not isinstance(value, float):
      raise UserError(f"config key {key} expects a number, got: {raw}")
  elif isinstance(old, str):
    value = raw
  elif isinstance(old, (tuple, list)) and isinstance(value, (tuple, list)):
    value = type(old)(value)
  elif isinstance(old, ml_collections.ConfigDict):
    if not isinstance(value, dict):
      raise UserError(f"config key {key} is a group; set its fields, e.g. --config.{key}.<field>=...")
    value = ml_collections.ConfigDict(value)
  with node.unlocked() if isinstance(node, ml_collections.ConfigDict) else _nullcontext():
    node[last] = value


class _nullcontext:
  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False


def split_config_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
  """Separates `--config.k=v` items from the other command-line arguments."""
  rest, overrides = [], []
  for a in argv:
    (overrides if a.startswith("--config.") else rest).append(a)
  return rest, overrides
