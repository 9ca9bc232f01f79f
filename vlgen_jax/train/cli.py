"""`vlgen train --config X --workdir W [--config.key=value ...]`."""
from __future__ import annotations

import argparse
import sys

HELP = "train a model (toy, vq, t2i) with the sharded trainer; resumes from WORKDIR's checkpoints"


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--config", required=True,
                      help="config file (configs/X.py, X.py or X; optional :arg), e.g. configs/toy.py")
  parser.add_argument("--workdir", required=True,
                      help="run directory: config.json, checkpoints/, export/, metrics.jsonl, "
                           "tensorboard/")
  parser.epilog = ("Override any config field with --config.key=value (e.g. "
                   "--config.total_steps=100 --config.mesh.fsdp=4). Several processes: set "
                   "VLGEN_COORDINATOR_ADDRESS, VLGEN_NUM_PROCESSES and VLGEN_PROCESS_ID, or run "
                   "under SLURM / on a TPU pod slice.")


def run(args) -> int:
  from vlgen_jax.config import load_config
  config = load_config(args.config, args.config_overrides)
  # Multi-host start-up must come before anything touches the devices.
  from vlgen_jax.train import mesh
  mesh.maybe_initialize_distributed()
  from vlgen_jax.train.trainer import NonFiniteError, train
  try:
    train(config, args.workdir)
  except NonFiniteError as e:
    print(f"error: {e}", file=sys.stderr)
    return 3
  return 0
