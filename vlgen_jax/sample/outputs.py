"""What `vlgen sample` reads (a prompts file) and writes (numbered PNGs,
captions.tsv, a grid and sample.json)."""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np

from vlgen_jax import files
from vlgen_jax.errors import UserError
from vlgen_jax.images import CELL_PX, make_grid, save_png

GRID_IMAGES = 64  # images shown in grid.png (8 x 8)
SAMPLE_INFO = "sample.json"  # the run, step and evaluators that made the folder


def read_prompts_file(path: str) -> list[str]:
  if not os.path.isfile(path):
    raise UserError(f"prompts file not found: {path}")
  with open(path, encoding="utf-8", errors="replace") as f:
    # Plain text, one caption per line; nothing in it is interpreted.
    prompts = [line.rstrip("\r\n") for line in f]
  while prompts and not prompts[-1].strip():
    prompts.pop()
  if not prompts:
    raise UserError(f"prompts file is empty: {path}")
  return prompts


def tsv_caption(prompt: str) -> str:
  """A prompt as one captions.tsv field: tabs and line breaks become spaces."""
  return prompt.replace("\t", " ").replace("\r", " ").replace("\n", " ")


def write_outputs(outdir: str, images: Sequence[np.ndarray], prompts: Sequence[str], *,
                  captions_in_grid: bool = True, info: Mapping[str, Any] | None = None) -> str:
  """OUT/00000.png..., OUT/captions.tsv, OUT/grid.png and OUT/sample.json
  (`info`: which run made them); returns the grid path."""
  os.makedirs(outdir, exist_ok=True)
  if info is not None:
    files.write_json(os.path.join(outdir, SAMPLE_INFO), dict(info))
  lines = []
  for i, (image, prompt) in enumerate(zip(images, prompts)):
    name = f"{i:05d}.png"
    save_png(image, os.path.join(outdir, name))
    lines.append(f"{name}\t{tsv_caption(prompt)}\n")
  files.write_text(os.path.join(outdir, "captions.tsv"), "".join(lines))
  grid_path = os.path.join(outdir, "grid.png")
  n = min(len(images), GRID_IMAGES)
  save_png(make_grid(images[:n], cols=8, cell_px=CELL_PX,
                     captions=list(prompts[:n]) if captions_in_grid else None,
                     caption_width=CELL_PX + 32), grid_path)
  return grid_path


PROGRESS_FILE = "sample_progress.json"


class SampleWriter:
  """Writes a `vlgen sample` folder as it is sampled: each batch's PNGs and
  captions.tsv lines go to `<outdir>.partial/` (vlgen_jax/partial.py) and
  the progress file counts the images done, so a rerun with the same
  options resumes after them; `finish` adds grid.png and sample.json and
  renames the folder to `outdir`. Memory holds one batch of images."""

  def __init__(self, outdir: str, options: Mapping[str, Any]):
    from vlgen_jax import partial  # pylint: disable=g-import-not-at-top
    self._out = partial.PartialOutput(outdir, dict(options), PROGRESS_FILE)
    self.path = self._out.path
    self._progress = self._out.open(0)
    self.done = int(self._progress["done"])
    tsv = os.path.join(self.path, "captions.tsv")
    # Lines or images past the last counted batch are from the run that was
    # stopped while writing them: dropped, and sampled again.
    lines = []
    if os.path.exists(tsv):
      with open(tsv, encoding="utf-8") as f:
        lines = f.read().split("\n")[:self.done]
    files.write_text(tsv, "".join(line + "\n" for line in lines))
    for name in os.listdir(self.path):
      if name.endswith(".png") and name[:-4].isdigit() and int(name[:-4]) >= self.done:
        os.remove(os.path.join(self.path, name))
    self._tsv = open(tsv, "a", encoding="utf-8")  # pylint: disable=consider-using-with

  def write(self, images: Sequence[np.ndarray], prompts: Sequence[str]) -> None:
    lines = []
    for image, prompt in zip(images, prompts):
      name = f"{self.done + len(lines):05d}.png"
      save_png(image, os.path.join(self.path, name))
      lines.append(f"{name}\t{tsv_caption(prompt)}\n")
    self._tsv.writelines(lines)
    self._tsv.flush()
    self.done += len(lines)
    self._progress["done"] = self.done
    self._out.save(self._progress)

  def close(self) -> None:
    self._tsv.close()

  def finish(self, info: Mapping[str, Any], captions_in_grid: bool = True) -> str:
    """grid.png (the first 64 images, read back) and sample.json; publishes
    the folder; returns the grid's final path."""
    from PIL import Image  # pylint: disable=g-import-not-at-top
    self.close()
    n = min(self.done, GRID_IMAGES)
    with open(os.path.join(self.path, "captions.tsv"), encoding="utf-8") as f:
      entries = [line.split("\t", 1) for line in f.read().splitlines()[:n]]
    images = []
    for name, _ in entries:
      with Image.open(os.path.join(self.path, name)) as im:
        images.append(np.asarray(im.convert("RGB")))
    save_png(make_grid(images, cols=8, cell_px=CELL_PX,
                       captions=[c for _, c in entries] if captions_in_grid else None,
                       caption_width=CELL_PX + 32), os.path.join(self.path, "grid.png"))
    files.write_json(os.path.join(self.path, SAMPLE_INFO), dict(info))
    self._out.publish()
    return os.path.join(self._out.output, "grid.png")
