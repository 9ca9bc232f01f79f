"""Evaluation reports: score images with the chosen evaluators, write a
folder people can look at (grid.png, scores.jsonl, results.json)."""
from __future__ import annotations

import codecs
import json
import os
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from vlgen_jax import files
from vlgen_jax.errors import UserError
from vlgen_jax.eval import evaluators as evaluators_lib
from vlgen_jax.images import CELL_PX, make_grid, save_png

SATISFIED_COLOR = (40, 200, 80)   # grid frame: the image satisfies its caption
FAILED_COLOR = (220, 40, 40)
UNSCORED_COLOR = (128, 128, 128)  # no evaluator could judge the caption
GRID_IMAGES = 64


MAX_IMAGE_PIXELS = 4096 * 4096  # larger files are skipped unread (decompression bombs)


def read_image_folder(folder: str, skipped: dict | None = None
                      ) -> tuple[list[np.ndarray], list[str]]:
  """(images, captions) from `folder/captions.tsv` (`filename<TAB>caption`,
  UTF-8, an optional byte order mark). A name that is not a file inside the
  folder (e.g. a symlink out of it) or a file that is not UTF-8 is a
  UserError; an image that cannot be decoded or is larger than
  MAX_IMAGE_PIXELS is skipped and counted in `skipped` by reason."""
  tsv = os.path.join(folder, "captions.tsv")
  if not os.path.isfile(tsv):
    raise UserError(f"no captions.tsv in {folder}")
  root = os.path.realpath(folder)
  skipped = {} if skipped is None else skipped
  images, captions = [], []
  with open(tsv, "rb") as f:
    data = f.read().removeprefix(codecs.BOM_UTF8)
  for n, raw in enumerate(data.split(b"\n"), 1):
    try:
      line = raw.decode("utf-8").rstrip("\r")
    except UnicodeDecodeError:
      raise UserError(f"{tsv}:{n}: not UTF-8 text; save the file as UTF-8") from None
    if not line:
      continue
    name, sep, caption = line.partition("\t")
    if not sep:
      raise UserError(f"{tsv}:{n}: expected 'filename<TAB>caption'")
    path = os.path.realpath(os.path.join(folder, name))
    # Names (or symlinks) leading out of the folder are never read.
    if (os.path.dirname(os.path.normpath(name)) or os.path.commonpath([path, root]) != root
        or not os.path.isfile(path)):
      raise UserError(f"{tsv}:{n}: image not found in {folder}: {name!r}")
    image, reason = _read_image(path)
    if image is None:
      skipped[reason] = skipped.get(reason, 0) + 1
      continue
    images.append(image)
    captions.append(caption)
  if not images:
    raise UserError(f"{tsv} lists no readable images" + (f" (skipped: {skipped})" if skipped
                                                         else ""))
  return images, captions


def _read_image(path: str) -> tuple[np.ndarray | None, str]:
  try:
    with Image.open(path) as im:
      if im.width * im.height > MAX_IMAGE_PIXELS:
        return None, "too_large"
      return np.asarray(im.convert("RGB")), ""
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
    # PIL's errors for garbage, truncated or unsupported files.
    return None, "undecodable_image"


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
  files.write_text(os.path.join(report_dir, "scores.jsonl"), "".join(
      json.dumps({"index": i, "caption": c, **{
          ev.name: (None if per_image[ev.name][i] is None else {
              "satisfied": ev.satisfied(per_image[ev.name][i]),
              "detected": ev.describe(per_image[ev.name][i])})
          for ev in evaluators}}) + "\n" for i, c in enumerate(captions)))
  save_png(grid, os.path.join(report_dir, "grid.png"))
  files.write_json(os.path.join(report_dir, "results.json"), results)
  return results
