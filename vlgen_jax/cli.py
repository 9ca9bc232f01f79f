"""`vlgen` command line: one subcommand per pipeline stage.

Each subcommand lives next to the code it drives, in a module exposing
`HELP` (one line), `add_arguments(parser)` and `run(args) -> int`. Those
modules import jax/TF lazily inside `run`, so `vlgen --help` stays instant,
and only the command being run adds its arguments (so `vlgen demo` on a
user's data never imports a dataset plug-in it does not use).
`--config.key=value` items are collected into `args.config_overrides`.
"""
from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading

from vlgen_jax import errors, runtime
from vlgen_jax.errors import UserError
from vlgen_jax.config import split_config_overrides

# name -> module. Order is the order of the pipeline.
COMMANDS = {
    "data": "vlgen_jax.data.cli",
    "text-tokenizer": "vlgen_jax.text.cli",
    "train": "vlgen_jax.train.cli",
    "model-info": "vlgen_jax.train.model_info",
    "encode": "vlgen_jax.vq.encode",
    "sample": "vlgen_jax.sample.cli",
    "edit": "vlgen_jax.sample.edit_cli",
    "caption": "vlgen_jax.sample.caption_cli",
    "eval": "vlgen_jax.eval.cli",
    "demo": "vlgen_jax.demo",
}


def _available_commands():
  for name, module_name in COMMANDS.items():
    if importlib.util.find_spec(module_name) is not None:
      yield name, importlib.import_module(module_name)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
  """The parser; with `command`, only that subcommand gets its arguments."""
  parser = argparse.ArgumentParser(
      prog="vlgen", description="vlgen_jax: text-to-image generation with JAX/Flax.")
  sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
  for name, module in _available_commands():
    p = sub.add_parser(name, help=module.HELP, description=module.HELP)
    if command in (None, name):
      module.add_arguments(p)
    p.set_defaults(_module=module)
  return parser


def main(argv=None) -> int:
  runtime.tune_malloc()  # before jax allocates anything
  argv = list(sys.argv[1:] if argv is None else argv)
  rest, overrides = split_config_overrides(argv)
  command = next((a for a in rest if not a.startswith("-")), None)
  parser = build_parser(command if command in COMMANDS else None)
  args = parser.parse_args(rest)
  args.config_overrides = overrides
  if overrides and not hasattr(args, "config"):
    parser.error(f"{args.command} takes no --config.* overrides")
  # Commands that stop cleanly at a step or batch install their own handlers.
  main_thread = threading.current_thread() is threading.main_thread()
  previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
  try:
    return _run(args)
  finally:
    if main_thread:
      signal.signal(signal.SIGTERM, previous)


def _run(args) -> int:
  try:
    return int(args._module.run(args) or 0)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except OSError as e:
    # Only errors the OS reported (with an errno): a bad path or permission is
    # the user's to fix (2), a full disk or I/O failure the machine's (1).
    # Anything else is a bug and keeps its traceback.
    if e.errno is None:
      raise
    print(f"error: {errors.describe_os_error(e)}", file=sys.stderr)
    code = 2 if e.errno in errors.USER_ERRNOS else 1
    if getattr(e, "abandoned_threads", False):
      # Background writers (Orbax) still hold the failed I/O; a normal exit
      # would print each of their tracebacks while tearing them down.
      sys.stdout.flush()
      sys.stderr.flush()
      os._exit(code)  # pylint: disable=protected-access
    return code
  except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    return 130
  except errors.Terminated:
    print("stopped by SIGTERM", file=sys.stderr)
    return 128 + signal.SIGTERM


def _terminate(signum, frame):
  del signum, frame
  raise errors.Terminated()


if __name__ == "__main__":
  sys.exit(main())
