"""Finds the objects of a `shapes` image on its pixels (no learned model).

Steps, all vectorised numpy/scipy:
  1. every pixel takes the palette color whose ray from black {a * color}
     passes nearest (blur and anti-aliasing on black scale a color down), if
     it is at least half as bright as that color and within
     `max_color_distance` of the ray; other pixels are background;
  2. connected components (8-connected) per color; components smaller than
     `min_area_fraction` of a small object's box are specks and dropped;
  3. per component: size from the bounding box's longer side (threshold
     halfway between small and large), cell from the box centre, and shape
     from the best IoU between the component and the ideal circle / square /
     triangle masks fitted to its box (the renderer's own masks). A component
     whose best IoU is below `min_shape_iou`, or whose box is far from square,
     is an object of unknown shape: it still counts, and matches nothing.

Tolerance (fraction of 200 validation images still satisfying their
captions; tests/test_detector.py pins the mild cases at 64 px):
  64 px: gaussian noise sigma <= 30 (of 255): 100%, sigma 40: 99.5%;
         gaussian blur sigma <= 1.2 px: 100%, 1.5 px: 98.5%;
         a per-image RGB offset of object pixels, each channel uniform in
         +-40: 99.5%, +-50: 98%;
  32 px (small objects are 6 px): noise sigma 20: 100%, 40: 96.5%;
         blur sigma <= 0.75 px: 100%;
  128 px: noise sigma 40: 100%; blur sigma <= 2.4 px: 100%.
A 4 px blur at 64 px destroys most images' shapes (tested).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
from scipy import ndimage

from vlgen_jax.shapes import scenes

_PALETTE = np.array([scenes.COLORS[c] for c in scenes.COLOR_NAMES], np.float32)
_PALETTE_NORM2 = (_PALETTE**2).sum(-1)
_EIGHT_CONNECTED = np.ones((3, 3), bool)

# Halfway between the small (12 px) and large (22 px) box sides, at 64 px.
SIZE_THRESHOLD_PX = (scenes.SIZE_PX["small"] + scenes.SIZE_PX["large"]) / 2


@dataclasses.dataclass(frozen=True)
class DetectorConfig:
  max_color_distance: float = 80.0  # RGB units from a color's ray; blue/purple are ~107 apart
  min_intensity: float = 0.5  # of the color's brightness: a blurred edge's true boundary
  min_area_fraction: float = 0.2  # of a small box's area (12x12 at 64 px), i.e. 28.8 px
  min_shape_iou: float = 0.6  # below it the blob is of unknown shape
  max_aspect_ratio: float = 1.5  # longer / shorter bbox side of a real object


@dataclasses.dataclass(frozen=True)
class Detection:
  """One detected object. `shape` is "unknown" when no template fits."""
  shape: str
  color: str
  size: str
  row: int
  col: int
  bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive), pixels
  area: int
  shape_iou: float

  def key(self) -> tuple[str, str, str, int, int]:
    return (self.shape, self.color, self.size, self.row, self.col)

  def to_object(self) -> scenes.ShapeObject | None:
    if self.shape not in scenes.SHAPES:
      return None
    return scenes.ShapeObject(self.shape, self.color, self.size, self.row, self.col)


def _check_image(image: np.ndarray) -> np.ndarray:
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3 or image.shape[0] != image.shape[1]:
    raise ValueError(f"expected a square HxWx3 RGB image, got shape {image.shape}")
  if image.dtype != np.uint8:
    raise ValueError(f"expected uint8 pixels, got {image.dtype}")
  return image


def classify_pixels(image: np.ndarray, max_color_distance: float = 80.0,
                    min_intensity: float = 0.5) -> np.ndarray:
  """int (H, W): index into `scenes.COLOR_NAMES`, or -1 for background.

  On a black background, blur and anti-aliasing turn a color c into a*c with
  0 < a <= 1, so a pixel p is compared with the ray {a*c}: its intensity
  a = <p, c> / <c, c> and its distance |p - a*c| to the ray. The pixel takes
  the color of the nearest ray if there a >= `min_intensity` (half intensity
  is where a blurred edge crosses the true boundary) and the distance is
  <= `max_color_distance`; anything else is background. (Gating before picking
  the nearest ray would let a dim white edge, gray, pass as purple.)
  """
  image = _check_image(image)
  pixels = image.reshape(-1, 3).astype(np.float32)
  norm2 = (pixels * pixels).sum(-1)
  # a >= min_intensity needs |p| >= min_intensity * |c| (Cauchy-Schwarz): only
  # pixels that bright can be foreground, so skip the (mostly black) rest.
  candidates = np.nonzero(norm2 >= min_intensity**2 * _PALETTE_NORM2.min())[0]
  p, p_norm2 = pixels[candidates], norm2[candidates, None]
  dots = p @ _PALETTE.T  # (N, C): <p, c>
  alpha = dots / _PALETTE_NORM2
  a = np.minimum(alpha, 1.0)  # brighter than the palette: compare with c itself
  dist2 = p_norm2 - 2 * a * dots + a * a * _PALETTE_NORM2  # |p - a c|^2
  nearest = dist2.argmin(-1)[:, None]
  keep = ((np.take_along_axis(alpha, nearest, -1) >= min_intensity) &
          (np.take_along_axis(dist2, nearest, -1) <= max_color_distance**2))[:, 0]
  labels = np.full(pixels.shape[0], -1, np.int64)
  labels[candidates] = np.where(keep, nearest[:, 0], -1)
  return labels.reshape(image.shape[:2])


def _classify_shape(component: np.ndarray) -> tuple[str, float]:
  """Best-IoU shape for a component cropped to its bounding box."""
  h, w = component.shape
  best, best_iou = "unknown", -1.0
  area = component.sum()
  for name in scenes.SHAPES:
    template = scenes.shape_mask(name, h, w)
    inter = np.logical_and(component, template).sum()
    iou = inter / (area + template.sum() - inter)
    if iou > best_iou:
      best, best_iou = name, float(iou)
  return best, best_iou


def detect(image: np.ndarray, config: DetectorConfig = DetectorConfig()) -> list[Detection]:
  """Objects found in a square uint8 RGB image, in reading order of their cells."""
  labels = classify_pixels(image, config.max_color_distance, config.min_intensity)
  resolution = labels.shape[0]
  scale = resolution / scenes.BASE_RESOLUTION
  min_area = config.min_area_fraction * (scenes.SIZE_PX["small"] * scale) ** 2
  cell_px = resolution / scenes.GRID
  found = []
  for color_index in np.unique(labels):
    if color_index < 0:
      continue
    components, _ = ndimage.label(labels == color_index, structure=_EIGHT_CONNECTED)
    for index, box in enumerate(ndimage.find_objects(components), start=1):
      crop = components[box] == index
      area = int(crop.sum())
      if area < min_area:
        continue
      y0, y1, x0, x1 = box[0].start, box[0].stop, box[1].start, box[1].stop
      h, w = y1 - y0, x1 - x0
      shape, iou = _classify_shape(crop)
      if iou < config.min_shape_iou or max(h, w) > config.max_aspect_ratio * min(h, w):
        shape = "unknown"
      row = min(int((y0 + y1) / 2 // cell_px), scenes.GRID - 1)
      col = min(int((x0 + x1) / 2 // cell_px), scenes.GRID - 1)
      size = "large" if max(h, w) > SIZE_THRESHOLD_PX * scale else "small"
      found.append(Detection(shape, scenes.COLOR_NAMES[color_index], size, row, col,
                             (x0, y0, x1, y1), area, iou))
  found.sort(key=lambda d: (d.row, d.col, d.bbox))
  return found


def describe(detections: Sequence[Detection]) -> str:
  """Caption-like text of detections ("unknown" shapes included), for logs."""
  return " and ".join(
      f"a {d.size} {d.color} {d.shape} {scenes.POSITIONS[d.row][d.col]}" for d in detections)
