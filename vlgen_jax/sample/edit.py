"""Image editing with a trained text-to-image run: inpainting, outpainting, variations.

The image is VQ-encoded; the tokens whose patch touches the edit region are
regenerated conditioned on the prompt and on the kept tokens, the family's
way (`Family.editing`): the masked family natively (every regenerated token
sees every kept one), the causal families in raster order with kept tokens
forced (a regenerated token sees only the kept tokens before it: weaker).
The result is decoded and pasted into the input, so every pixel outside the
region is exactly the input's.
"""
from __future__ import annotations

import os

import numpy as np

from vlgen_jax.errors import UserError


def read_image(path: str, resolution: int) -> np.ndarray:
  """(R, R, 3) uint8. Any PIL mode is converted to RGB (alpha dropped); a
  size other than the run's R x R is an error (no silent resize)."""
  from PIL import Image
  if not os.path.isfile(path):
    raise UserError(f"image not found: {path}")
  try:
    with Image.open(path) as im:
      im.load()
      if im.size != (resolution, resolution):
        raise UserError(f"{path} is {im.size[0]}x{im.size[1]} px; the run's images are "
                        f"{resolution}x{resolution}")
      return np.asarray(im.convert("RGB"), np.uint8)
  except (OSError, Image.DecompressionBombError) as e:
    raise UserError(f"cannot read image {path}: {e}") from None


def _parse_box(text: str, resolution: int, flag: str) -> tuple[int, int, int, int]:
  parts = text.split(",")
  try:
    x0, y0, x1, y1 = (int(p) for p in parts)
  except ValueError:
    raise UserError(f"{flag} must be x0,y0,x1,y1 (integer pixels), got {text!r}") from None
  if x1 <= x0 or y1 <= y0:
    raise UserError(f"{flag} {text} is empty (need x0 < x1 and y0 < y1)")
  if x0 < 0 or y0 < 0 or x1 > resolution or y1 > resolution:
    raise UserError(f"{flag} {text} is outside the {resolution}x{resolution} canvas")
  return x0, y0, x1, y1


def box_mask(text: str, resolution: int, *, outside: bool = False) -> np.ndarray:
  """(R, R) bool region to regenerate from "x0,y0,x1,y1" (x1, y1 exclusive);
  `outside`: everything but the box (outpainting around kept content)."""
  x0, y0, x1, y1 = _parse_box(text, resolution, "--keep-box" if outside else "--box")
  mask = np.zeros((resolution, resolution), bool)
  mask[y0:y1, x0:x1] = True
  if outside:
    mask = ~mask
    if not mask.any():
      raise UserError(f"--keep-box {text} keeps the whole canvas: nothing to regenerate")
  return mask


def read_mask(path: str, resolution: int) -> np.ndarray:
  """(R, R) bool from a mask image of the same size: pixels > 127 (as gray) are regenerated."""
  from PIL import Image
  if not os.path.isfile(path):
    raise UserError(f"mask not found: {path}")
  try:
    with Image.open(path) as im:
      if im.size != (resolution, resolution):
        raise UserError(f"mask {path} is {im.size[0]}x{im.size[1]} px; the image is "
                        f"{resolution}x{resolution}")
      mask = np.asarray(im.convert("L")) > 127
  except OSError as e:
    raise UserError(f"cannot read mask {path}: {e}") from None
  if not mask.any():
    raise UserError(f"mask {path} is empty (no pixel > 127): nothing to regenerate")
  return mask


def regenerated_tokens(pixel_mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
  """(N,) bool: tokens whose patch holds any pixel of the region."""
  h, w = grid
  r = pixel_mask.shape[0]
  patches = pixel_mask.reshape(h, r // h, w, r // w)
  return patches.any(axis=(1, 3)).reshape(-1)


def token_region(tokens: np.ndarray, grid: tuple[int, int], resolution: int) -> np.ndarray:
  """(N,) bool tokens -> (R, R) bool pixels of their patches."""
  h, w = grid
  cells = tokens.reshape(h, w)
  return np.repeat(np.repeat(cells, resolution // h, axis=0), resolution // w, axis=1)


def redraw_tokens(seed: int, count: int, region: np.ndarray, fraction: float) -> np.ndarray:
  """(count, N) bool: per variation, round(fraction * |region|) (>= 1) random
  tokens of `region` (N,) bool to re-draw."""
  if not 0.0 < fraction <= 1.0:
    raise UserError(f"--redraw must be in (0, 1], got {fraction}")
  candidates = np.flatnonzero(region)
  k = max(1, int(round(fraction * candidates.size)))
  rng = np.random.default_rng(seed)
  out = np.zeros((count, region.size), bool)
  for i in range(count):
    out[i, rng.choice(candidates, size=k, replace=False)] = True
  return out


def edit_image(gen, image: np.ndarray, pixel_mask: np.ndarray, prompt: str, options, *,
               variations: int = 1, redraw: float | None = None, seed: int = 0,
               batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
  """`variations` edits of `image` (R, R, 3) uint8 in `pixel_mask` (R, R):
  returns (images (n, R, R, 3) uint8, regenerated pixel regions (n, R, R))."""
  spec = gen.spec
  resolution = image.shape[0]
  known = np.asarray(gen.vq.encode(image[None])).reshape(1, -1)
  region = regenerated_tokens(pixel_mask, spec.image_grid)
  if redraw is None:
    regen = np.repeat(region[None], variations, axis=0)
  else:
    regen = redraw_tokens(seed, variations, region, redraw)
  _, tokens = gen.edit([prompt] * variations, np.repeat(known, variations, axis=0), ~regen,
                       options, seed=seed, batch_size=batch_size)
  decoded = gen.vq.decode_uint8(tokens.reshape(variations, *spec.image_grid))
  # Only the region the user asked for changes (token patches can be larger).
  pixels = np.stack([token_region(r, spec.image_grid, resolution) & pixel_mask for r in regen])
  out = np.where(pixels[..., None], decoded, image[None])
  return out.astype(np.uint8), pixels
