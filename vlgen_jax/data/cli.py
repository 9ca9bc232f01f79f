"""`vlgen data NAME`: prepare a dataset that is built locally (no download).

Each dataset is a plug-in module with `HELP`, `DESCRIPTION`,
`add_arguments(parser)` and `run(args)`, imported only when `vlgen data`
runs.
"""
from __future__ import annotations

import argparse
import importlib

HELP = "prepare a locally built dataset (e.g. the embedded `shapes`)"

# `vlgen data NAME` -> plug-in module.
DATASETS = {
    "shapes": "vlgen_jax.shapes.cli",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
  sub = parser.add_subparsers(dest="dataset", metavar="DATASET", required=True)
  for name, module_name in DATASETS.items():
    module = importlib.import_module(module_name)
    p = sub.add_parser(name, help=module.HELP, description=module.DESCRIPTION)
    module.add_arguments(p)
    p.set_defaults(_dataset_module=module)


def run(args) -> int:
  return args._dataset_module.run(args)
