"""Loading `configs/*.py` files and applying `--config.a.b=value` overrides.

A config file is a python module with `get_config()` returning an
`ml_collections.ConfigDict` (running it is running code the user chose, like
big_vision and MaxText configs; nothing else on any load path executes code),
or a run's `config.json` (JSON, read as data).
An optional argument is passed as `path.py:arg` -> `get_config("arg")`.
"""
from __future__ import annotations

import ast
import importlib.util
import inspect
import json
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
  if module_spec is None or module_spec.loader is None:
    raise UserError(f"--config {path} is not a python config file (.py) or a config.json")
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module


def load_config(spec: str, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
  """Loads `path[:arg]` (a config file) or a run's `config.json`, and applies
  `key=value` overrides (keys without `--config.`). Every mistake in the spec
  or the file is a UserError."""
  if not spec.strip():
    raise UserError("--config is empty; give a config file (e.g. configs/toy.py) or a run's "
                    "config.json")
  path, _, arg = spec.partition(":")
  path = resolve_config_path(path)
  if os.path.isdir(path):
    hint = (f"; the run's own config is {os.path.join(path, 'config.json')}"
            if os.path.isfile(os.path.join(path, "config.json")) else "")
    raise UserError(f"--config {path} is a directory; give a config file{hint}")
  if path.endswith(".json"):
    if arg:
      raise UserError(f"--config {path} is a JSON config: it takes no ':{arg}'")
    config = load_json_config(path)
  else:
    config = _run_config_file(path, arg)
  for item in overrides:
    apply_override(config, item)
  return config


def load_json_config(path) -> ml_collections.ConfigDict:
  """A config saved as JSON (a run's config.json). JSON has no tuples: lists
  become tuples, as the config files write sequences."""
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except (ValueError, UnicodeDecodeError) as e:
    raise UserError(f"config {path} is not valid JSON ({e})") from None
  if not isinstance(data, dict):
    raise UserError(f"config {path} must hold a JSON object, got {type(data).__name__}")
  return ml_collections.ConfigDict(_tuples(data))


def _tuples(value):
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def _run_config_file(path: str, arg: str) -> ml_collections.ConfigDict:
  module = load_config_module(path)
  get_config = getattr(module, "get_config", None)
  if not callable(get_config):
    raise UserError(f"config file {path} has no get_config()")
  params = [p for p in inspect.signature(get_config).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
  required = [p for p in params if p.default is p.empty and p.kind != p.VAR_POSITIONAL]
  if arg and not params:
    raise UserError(f"config file {path} takes no argument; drop ':{arg}'")
  if not arg and required:
    raise UserError(f"config file {path} needs an argument: {path}:<{required[0].name}>")
  config = get_config(arg) if arg else get_config()
  if not isinstance(config, ml_collections.ConfigDict):
    raise UserError(f"get_config() of {path} returned a {type(config).__name__}; it must return "
                    "an ml_collections.ConfigDict (e.g. built on "
                    "vlgen_jax.train.defaults.trainer_config())")
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
    if abs(value) >= 2**63:
      raise UserError(f"config key {key} is out of range (|value| < 2**63), got: {raw}")
  elif isinstance(old, float):
    if isinstance(value, int) and not isinstance(value, bool):
      value = float(value)
    if not isinstance(value, float):
      raise UserError(f"config key {key} expects a number, got: {raw}")
  elif isinstance(old, str):
    value = raw
  elif isinstance(old, (tuple, list)):
    if not isinstance(value, (tuple, list)):
      example = "(" + ", ".join(str(v) for v in old) + ("," if len(old) == 1 else "") + ")"
      raise UserError(f"config key {key} expects a sequence like {example}, got: {raw}")
    value = type(old)(value)
  elif isinstance(old, ml_collections.ConfigDict):
    if not isinstance(value, dict):
      raise UserError(f"config key {key} is a group; set its fields, e.g. --config.{key}.<field>=...")
    value = ml_collections.ConfigDict(value)
  with node.unlocked() if isinstance(node, ml_collections.ConfigDict) else _nullcontext():
    try:
      node[last] = value
    except (TypeError, ValueError) as e:  # ConfigDict's own type check
      raise UserError(f"config key {key} cannot be set to {raw} ({e})") from None


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
