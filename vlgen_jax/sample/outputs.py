"""What `vlgen sample` reads (a prompts file) and writes (numbered PNGs,
captions.tsv, a grid and sample.json)."""
from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

import numpy as np

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


def write_outputs(outdir: str, images: Sequence[np.ndarray], prompts: Sequence[str], *,
                  captions_in_grid: bool = True, info: Mapping[str, Any] | None = None) -> str:
  """OUT/00000.png..., OUT/captions.tsv, OUT/grid.png and OUT/sample.json
  (`info`: which run made them); returns the grid path."""
  os.makedirs(outdir, exist_ok=True)
  if info is not None:
    with open(os.path.join(outdir, SAMPLE_INFO), "w", encoding="utf-8") as f:
      json.dump(dict(info), f, indent=2)
  with open(os.path.join(outdir, "captions.tsv"), "w", encoding="utf-8") as f:
    for i, (image, prompt) in enumerate(zip(images, prompts)):
      name = f"{i:05d}.png"
      save_png(image, os.path.join(outdir, name))
      f.write(f"{name}\t{prompt.replace(chr(9), ' ')}\n")
  grid_path = os.path.join(outdir, "grid.png")
  n = min(len(images), GRID_IMAGES)
  save_png(make_grid(images[:n], cols=8, cell_px=CELL_PX,
                     captions=list(prompts[:n]) if captions_in_grid else None,
                     caption_width=CELL_PX + 32), grid_path)
  return grid_path
