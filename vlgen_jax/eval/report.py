"""Evaluation reports: score images with the chosen evaluators, write a
folder people can look at (grid.png, scores.jsonl, results.json)."""
from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from vlgen_jax.errors import UserError
from vlgen_jax.eval import evaluators as evaluators_lib
from vlgen_jax.images import CELL_PX, make_grid, save_png

SATISFIED_COLOR = (40, 200, 80)   # grid frame: the image satisfies its caption
FAILED_COLOR = (220, 40, 40)
UNSCORED_COLOR = (128, 128, 128)  # no evaluator could judge the caption
GRID_IMAGES = 64


def read_image_folder(folder: str) -> tuple[list[np.ndarray], list[str]]:
  """(images, captions) from `folder/captions.tsv` (`filename<TAB>caption`)."""
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


def frame_colors(evaluators, per_image: Mapping[str, list], n: int) -> list[tuple[int, int, int]]:
  """Green when every evaluator that scored the image is satisfied, red when
  one is not, gray when none scored it."""
  colors = []
  for i in range(n):
    verdicts = [ev.satisfied(per_image[ev.name][i]) for ev in evaluators
                if per_image[ev.name][i] is not None]
    colors.append(UNSCORED_COLOR if not verdicts else
                  SATISFIED_COLOR if all(verdicts) else FAILED_COLOR)
  return colors


def sample_grid(images, captions, colors=None) -> np.ndarray:
  """The first 64 images with their captions (and frames), cells of CELL_PX."""
  n = min(GRID_IMAGES, len(images))
  return make_grid(list(images[:n]), cols=8, cell_px=CELL_PX, captions=list(captions[:n]),
                   caption_width=CELL_PX + 32,
                   frame_colors=None if colors is None else list(colors[:n]))


def score_images(evaluator_names: Sequence[str], images, captions):
  """(evaluators, per-image scores by evaluator, summaries by evaluator, grid)."""
  evaluators = evaluators_lib.build_all(evaluator_names)
  per_image, summaries = evaluators_lib.run_all(evaluators, images, captions)
  colors = frame_colors(evaluators, per_image, len(images)) if evaluators else None
  return evaluators, per_image, summaries, sample_grid(images, captions, colors)


def write_report(report_dir: str, images, captions, evaluator_names: Sequence[str],
                 extra: Mapping[str, Any] | None = None) -> dict:
  """Scores with the named evaluators and writes
  `report_dir/{grid.png,scores.jsonl,results.json}`; returns the results."""
  evaluators, per_image, summaries, grid = score_images(evaluator_names, images, captions)
  results = {"n": len(images), **(extra or {}), **summaries}
  os.makedirs(report_dir, exist_ok=True)
  _write_atomic(os.path.join(report_dir, "scores.jsonl"), "".join(
      json.dumps({"index": i, "caption": c, **{
          ev.name: (None if per_image[ev.name][i] is None else {
              "satisfied": ev.satisfied(per_image[ev.name][i]),
              "detected": ev.describe(per_image[ev.name][i])})
          for ev in evaluators}}) + "\n" for i, c in enumerate(captions)))
  save_png(grid, os.path.join(report_dir, "grid.png"))
  _write_atomic(os.path.join(report_dir, "results.json"), json.dumps(results, indent=2))
  return results


def _write_atomic(path: str, text: str) -> None:
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(tmp, path)
