"""Image grids for people to look at (PNG files, TensorBoard images)."""
from __future__ import annotations

import textwrap
from typing import Sequence

import numpy as np

BORDER = 2
BORDER_VALUE = 96


def make_grid(images: Sequence[np.ndarray], *, cols: int = 8, scale: int = 1,
              captions: Sequence[str] | None = None, caption_width: int = 0,
              frame_colors: Sequence[tuple[int, int, int]] | None = None) -> np.ndarray:
  """uint8 (n, H, W, 3) -> one uint8 grid image, `cols` per row, gray borders.

  With `captions`, each cell gets its caption written under the image
  (wrapped to the cell width), so a grid of samples can be checked by eye.
  `frame_colors` draws a colored frame around each image (e.g. green/red for
  images that do/don't satisfy their caption).
  """
  images = [np.asarray(im, np.uint8) for im in images]
  if not images:
    raise ValueError("make_grid needs at least one image")
  images = [im.repeat(scale, 0).repeat(scale, 1) if scale > 1 else im for im in images]
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
  from PIL import Image
  Image.fromarray(np.asarray(image, np.uint8)).save(path)
