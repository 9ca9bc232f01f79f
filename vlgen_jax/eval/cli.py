"""`vlgen eval`: caption fidelity of a trained run (or of a folder of images).

  vlgen eval --workdir W [--split validation|heldout] [--num N] [sampling options]
      samples the first N captions of the `shapes` split, scores the images
      with the pixel detector, prints one JSON line and writes a report folder
      (grid with captions, framed green when satisfied and red when not;
      per-image scores; summary JSON).
  vlgen eval --images DIR
      scores an existing folder with captions.tsv (e.g. from `vlgen sample`).
"""
from __future__ import annotations

import argparse
import json
import os

from vlgen_jax.errors import UserError

SATISFIED_COLOR = (40, 200, 80)   # grid frame of an image that satisfies its caption
FAILED_COLOR = (220, 40, 40)
UNSCORED_COLOR = (128, 128, 128)  # caption outside the shapes grammar

HELP = "score generated images against their shapes captions (fidelity)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
  from vlgen_jax.sample.cli import add_sampling_arguments
  src = parser.add_mutually_exclusive_group(required=True)
  src.add_argument("--workdir", help="a t2i training workdir, or a `vlgen demo` workdir")
  src.add_argument("--images", help="folder with captions.tsv and the PNGs it names")
  parser.add_argument("--split", default="validation", choices=("validation", "heldout", "train"))
  parser.add_argument("--num", type=int, default=200, help="captions to sample and score")
  parser.add_argument("--report", default=None,
                      help="report folder (default: WORKDIR/eval/<split>-<num>-cfg<scale> or "
                           "IMAGES/eval)")
  parser.add_argument("--batch-size", type=int, default=32)
  add_sampling_arguments(parser)


def read_image_folder(folder: str):
  """(images, captions) from `folder/captions.tsv` (`filename<TAB>caption`)."""
  import numpy as np
  from PIL import Image
  tsv = os.path.join(folder, "captions.tsv")
  if not os.path.isfile(tsv):
    raise UserError(f"no captions.tsv in {folder}")
  images, captions = [], []
  with open(tsv, encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
      line = line.rstrip("\r\n")
      if not line:
        continue
      name, sep, caption = line.partition("\t")
      if not sep:
        raise UserError(f"{tsv}:{n}: expected 'filename<TAB>caption'")
      path = os.path.join(folder, name)
      if os.path.dirname(os.path.normpath(name)) or not os.path.isfile(path):
        raise UserError(f"{tsv}:{n}: image not found in {folder}: {name}")
      with Image.open(path) as im:
        images.append(np.asarray(im.convert("RGB")))
      captions.append(caption)
  if not images:
    raise UserError(f"{tsv} lists no images")
  return images, captions


def split_captions(split: str, num: int) -> list[str]:
  from vlgen_jax.data import shapes
  return [shapes.build_caption(shapes.sample_scene(split, i).objects) for i in range(num)]


def score_samples(images, captions) -> tuple[list, dict | None]:
  """Per-image `fidelity.score` results (None where the caption is outside the
  shapes grammar, e.g. "" for unconditional samples) and their summary (None
  when nothing was scored)."""
  from vlgen_jax.data import shapes
  from vlgen_jax.eval import fidelity
  scores = []
  for image, caption in zip(images, captions):
    try:
      objects = shapes.parse_caption(caption)
    except ValueError:
      scores.append(None)
      continue
    scores.append(fidelity.score(image, objects))
  scored = [s for s in scores if s is not None]
  return scores, (fidelity.summarize(scored) if scored else None)


def sample_grid(images, captions, scores):
  """The first 64 images with their captions, framed green (satisfied), red
  (not) or gray (not scored)."""
  from vlgen_jax.images import make_grid
  n = min(64, len(images))
  frames = [UNSCORED_COLOR if s is None else SATISFIED_COLOR if s["satisfied"] else FAILED_COLOR
            for s in scores[:n]]
  return make_grid(list(images[:n]), cols=8, scale=2, captions=list(captions[:n]),
                   caption_width=160, frame_colors=frames)


def score_and_report(images, captions, report_dir: str, extra: dict | None = None) -> dict:
  """Scores, writes `report_dir/{grid.png,scores.jsonl,results.json}`; returns the summary."""
  import sys
  from vlgen_jax.eval import shapes_detector
  from vlgen_jax.images import save_png
  all_scores, summary = score_samples(images, captions)
  # Captions outside the shapes grammar cannot be scored: skipped and
  # counted, never silently dropped.
  skipped = sum(s is None for s in all_scores)
  if skipped:
    print(f"warning: {skipped} caption(s) are not shapes captions and were not scored",
          file=sys.stderr)
  if summary is None:
    raise UserError("none of the captions is a shapes caption; nothing to score")
  kept = [i for i, s in enumerate(all_scores) if s is not None]
  images = [images[i] for i in kept]
  captions = [captions[i] for i in kept]
  scores = [all_scores[i] for i in kept]
  summary["unscored_captions"] = skipped
  summary.update(extra or {})
  os.makedirs(report_dir, exist_ok=True)
  with open(os.path.join(report_dir, "scores.jsonl"), "w") as f:
    for i, (c, s) in enumerate(zip(captions, scores)):
      f.write(json.dumps({"index": i, "caption": c, "satisfied": bool(s["satisfied"]),
                          "detected": shapes_detector.describe(s["detections"])}) + "\n")
  save_png(sample_grid(images, captions, scores), os.path.join(report_dir, "grid.png"))
  with open(os.path.join(report_dir, "results.json"), "w") as f:
    json.dump(summary, f, indent=2)
  return summary


def run(args) -> int:
  if args.num < 1:
    raise UserError(f"--num must be >= 1, got {args.num}")
  if args.batch_size < 1:
    raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
  if args.images:
    images, captions = read_image_folder(args.images)
    report = args.report or os.path.join(args.images, "eval")
    summary = score_and_report(images, captions, report, {"images": args.images})
    print(json.dumps(summary))
    return 0

  import jax
  from tqdm import tqdm
  from vlgen_jax.sample.cli import sampling_options, write_outputs
  from vlgen_jax.sample.generator import Generator, run_config
  from vlgen_jax.train import mesh as mesh_lib
  mesh_lib.maybe_initialize_distributed()  # several processes: before touching devices
  options = sampling_options(args, run_config(args.workdir))  # validate before loading
  gen = Generator.load(args.workdir, step=args.step, vq_workdir=args.vq_workdir,
                       mesh_overrides=args.mesh)
  captions = split_captions(args.split, args.num)
  with tqdm(total=len(captions), desc=f"eval {args.split}", unit="img",
            disable=jax.process_index() != 0) as bar:
    images, _ = gen.generate(captions, options, seed=args.seed, batch_size=args.batch_size,
                             progress=bar.update)
  if jax.process_index() != 0:
    return 0
  report = args.report or os.path.join(
      gen.run, "eval", f"{args.split}-{args.num}-cfg{options.cfg_scale:g}")
  write_outputs(os.path.join(report, "samples"), images, captions, captions_in_grid=False)
  summary = score_and_report(images, captions, report, {
      "split": args.split, "cfg_scale": options.cfg_scale, "temperature": options.temperature,
      "top_k": options.top_k, "top_p": options.top_p,
      "plausibility": options.plausibility, "seed": args.seed, "report": report})
  print(json.dumps(summary))
  return 0
