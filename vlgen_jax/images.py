"""Image grids for people to look at (PNG files, TensorBoard images)."""
from __future__ import annotations

import textwrap
from typing import Sequence

import numpy as np

from vlgen_jax import files

BORDER = 2
BORDER_VALUE = 96
CELL_PX = 128  # longer side of a grid cell's image, whatever the resolution


def fit_to_cell(image: np.ndarray, cell_px: int) -> np.ndarray:
  """`image` resized so its longer side is `cell_px`: integer pixel
  repetition when enlarging (sharp pixels), area averaging when shrinking."""
  h, w = image.shape[:2]
  if max(h, w) == cell_px:
    return image
  if cell_px % max(h, w) == 0:
    k = cell_px // max(h, w)
    return image.repeat(k, 0).repeat(k, 1)
  from PIL import Image
  size = (max(1, round(w * cell_px / max(h, w))), max(1, round(h * cell_px / max(h, w))))
  resample = Image.Resampling.BOX if max(h, w) > cell_px else Image.Resampling.NEAREST
  return np.asarray(Image.fromarray(image).resize(size, resample))


def make_grid(images: Sequence[np.ndarray], *, cols: int = 8, scale: int = 1,
              cell_px: int | None = None,
              captions: Sequence[str] | None = None, caption_width: int = 0,
              frame_colors: Sequence[tuple[int, int, int]] | None = None) -> np.ndarray:
  """uint8 (n, H, W, 3) -> one uint8 grid image, `cols` per row, gray borders.

  Images are enlarged `scale` times, or, with `cell_px`, resized to that many
  pixels (longer side) so a grid looks the same at 32 px and at 256 px.
  With `captions`, each cell gets its caption written under the image
  (wrapped to the cell width), so a grid of samples can be checked by eye.
  `frame_colors` draws a colored frame around each image (e.g. green/red for
  images that do/don't satisfy their caption).
  """
  images = [np.asarray(im, np.uint8) for im in images]
  if not images:
    raise ValueError("make_grid needs at least one image")
  if cell_px is not None:
    images = [fit_to_cell(im, cell_px) for im in images]
  elif scale > 1:
    images = [im.repeat(scale, 0).repeat(scale, 1) for im in images]
  h, w, _ = images[0].shape
  cols = min(cols, len(images))
  rows = -(-len(images) // cols)
  text_h = 0
  lines = []
  if captions is not None:
    from PIL import ImageFont
    font = ImageFont.load_default()
    chars = max(8, (max(w, caption_width) // 6))
    lines = [textwrap.wrap(c, chars)[:4] or [""] for c in captions]
    text_h = 11 * max(len(l) for l in lines) + 2
    w_cell = max(w, caption_width)
  else:
    w_cell = w
  step_y, step_x = h + text_h + BORDER, w_cell + BORDER
  grid = np.full((rows * step_y + BORDER, cols * step_x + BORDER, 3), BORDER_VALUE, np.uint8)
  for i, image in enumerate(images):
    r, c = divmod(i, cols)
    y, x = BORDER + r * step_y, BORDER + c * step_x
    if frame_colors is not None:
      grid[y - BORDER:y + h + BORDER, x - BORDER:x + w + BORDER] = frame_colors[i]
    grid[y:y + h, x:x + w] = image
  if captions is not None:
    from PIL import Image, ImageDraw
    canvas = Image.fromarray(grid)
    draw = ImageDraw.Draw(canvas)
    for i, cell_lines in enumerate(lines):
      r, c = divmod(i, cols)
      y, x = BORDER + r * step_y + h + 1, BORDER + c * step_x + 1
      draw.text((x, y), "\n".join(cell_lines), fill=(255, 255, 255), font=font, spacing=1)
    grid = np.asarray(canvas)
  return grid


def save_png(image: np.ndarray, path: str) -> None:
  """Writes `image` (H, W[, C] uint8) as a PNG, atomically."""
  from PIL import Image
  with files.atomic_path(path) as tmp:
    Image.fromarray(np.asarray(image, np.uint8)).save(tmp, format="PNG")
