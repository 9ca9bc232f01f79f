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
import sys

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
  argv = list(sys.argv[1:] if argv is None else argv)
  rest, overrides = split_config_overrides(argv)
  command = next((a for a in rest if not a.startswith("-")), None)
  parser = build_parser(command if command in COMMANDS else None)
  args = parser.parse_args(rest)
  args.config_overrides = overrides
  if overrides and not hasattr(args, "config"):
    parser.error(f"{args.command} takes no --config.* overrides")
  try:
    return int(args._module.run(args) or 0)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    return 130


if __name__ == "__main__":
  sys.exit(main())
