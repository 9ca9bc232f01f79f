"""`vlgen data shapes`: build the embedded `shapes` dataset and summarise it."""
from __future__ import annotations

import argparse
import collections
import os
import time

from vlgen_jax.errors import UserError

HELP = "build the embedded `shapes` dataset (docs/shapes.md) as TFDS ArrayRecord"
DESCRIPTION = ("Build `shapes` (docs/shapes.md) under DIR as TFDS ArrayRecord files (skipped if "
               "already built), print a summary and write a PNG grid of training examples "
               "next to it.")

_GRID_SIDE = 8  # examples per row/column of the preview grid
_READ_CHUNK = 1000


def add_arguments(p: argparse.ArgumentParser) -> None:
  from vlgen_jax.shapes import scenes  # numpy only: cheap
  p.add_argument("--data-dir", required=True, help="TFDS data dir to build into")
  p.add_argument("--resolution", type=int, default=64, choices=scenes.RESOLUTIONS,
                 help="image side in pixels (default 64)")
  for split, size in scenes.DEFAULT_SPLIT_SIZES.items():
    p.add_argument(f"--{split}-size", type=int, default=size,
                   help=f"examples in the {split} split (default {size})")


def _positive(name: str, value: int) -> int:
  if value < 1:
    raise UserError(f"--{name} must be >= 1, got {value}")
  return value


def write_grid(images, path: str, scale: int = 2) -> None:
  """Writes up to 64 uint8 HxWx3 images as an 8x8 PNG grid with gray borders."""
  from vlgen_jax.images import make_grid, save_png
  save_png(make_grid(list(images)[:_GRID_SIDE * _GRID_SIDE], cols=_GRID_SIDE, scale=scale), path)


def _split_stats(builder, split: str, progress: bool):
  """(objects-per-example histogram, # examples with a held-out pair), from the records."""
  import tensorflow_datasets as tfds
  from tqdm import tqdm
  from vlgen_jax.shapes import scenes
  source = builder.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()})
  counts, with_heldout = collections.Counter(), 0
  heldout_pairs = set(scenes.HELDOUT_PAIRS)
  for start in tqdm(range(0, len(source), _READ_CHUNK), desc=f"reading {split}",
                    unit="k examples", disable=not progress, leave=False):
    indices = range(start, min(start + _READ_CHUNK, len(source)))
    for record in source.__getitems__(list(indices)):
      objects = scenes.objects_from_features(record["objects"])
      counts[len(objects)] += 1
      with_heldout += any((o.color, o.shape) in heldout_pairs for o in objects)
  return counts, with_heldout


def run(args) -> int:
  from absl import logging as absl_logging
  from vlgen_jax.shapes import scenes
  from vlgen_jax.shapes import tfds_builder
  # tfds logs warnings that are noise here (a variant folder not built yet,
  # OpenCV missing for PNG decoding); errors still show.
  absl_logging.set_verbosity(absl_logging.ERROR)
  sizes = {split: _positive(f"{split}-size", getattr(args, f"{split}_size"))
           for split in scenes.SPLITS}
  start = time.perf_counter()
  try:
    builder = tfds_builder.shapes_builder(args.data_dir, args.resolution, **{
        f"{k}_size": v for k, v in sizes.items()})
    already = builder.is_prepared()
    builder = tfds_builder.prepare_shapes(args.data_dir, args.resolution, progress=True, **{
        f"{k}_size": v for k, v in sizes.items()})
  except ValueError as e:
    raise UserError(str(e)) from e
  except OSError as e:
    raise UserError(f"cannot build shapes in {args.data_dir}: {e}") from e
  elapsed = time.perf_counter() - start

  config = builder.builder_config
  print(f"shapes {config.name} {'already built' if already else f'built in {elapsed:.1f}s'}")
  print(f"  path: {builder.data_dir}")
  print("  splits: " + ", ".join(f"{s} {builder.info.splits[s].num_examples}"
                                  for s in scenes.SPLITS))
  train = builder.as_data_source("train")
  print("  example captions (train):")
  for i in range(min(4, len(train))):
    print(f"    {i}: {train[i]['caption'].decode()}")
  for split in scenes.SPLITS:
    counts, with_heldout = _split_stats(builder, split, progress=True)
    total = sum(counts.values())
    hist = ", ".join(f"{k} object{'s' if k > 1 else ''}: {v} ({v / total:.1%})"
                     for k, v in sorted(counts.items()))
    print(f"  objects per example ({split}): {hist}; "
          f"with a held-out pair: {with_heldout}/{total}")
  grid_path = os.path.join(os.fspath(args.data_dir), f"shapes-{config.name}-train-grid.png")
  write_grid((train[i]["image"] for i in range(min(_GRID_SIDE**2, len(train)))), grid_path)
  print(f"  preview of the first {min(_GRID_SIDE**2, len(train))} train images: {grid_path}")
  return 0
