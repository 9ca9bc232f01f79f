"""The `shapes` dataset in pure numpy: spec constants, sampling, rendering, captions.

The specification is docs/shapes.md. This module has no TensorFlow dependency:
the TFDS builder (`tfds_builder.py`), the detector (`detector.py`) and tests
all share these definitions.

Geometry is sampled once, in integer pixels of the 64 px base canvas, and
scaled to the requested resolution when rendering, so an example has the same
objects and caption at 32, 64 and 128 px. Two clarifications of the spec that
the geometry forces (a large box, 22 px, is wider than a cell, 64/3 px):
  * a box is clamped to lie inside the canvas (only large boxes in edge cells
    are affected; their jitter is cut at the canvas border);
  * the jitter of a two-object example is re-drawn until the two boxes are at
    least `MIN_GAP_PX` apart along x or y, so objects never touch, even when
    both are large and in neighbouring cells.
"""
from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

# Bump when sampling or rendering changes: identical version and config give
# byte-identical examples.
VERSION = "1.0.0"

SHAPES = ("circle", "square", "triangle")
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 90, 230),
    "yellow": (230, 210, 40),
    "purple": (150, 60, 200),
    "white": (240, 240, 240),
}
COLOR_NAMES = tuple(COLORS)
BACKGROUND = (0, 0, 0)
SIZES = ("small", "large")

BASE_RESOLUTION = 64
RESOLUTIONS = (32, 64, 128)
SIZE_PX = {"small": 12, "large": 22}  # bounding-box side at BASE_RESOLUTION
JITTER_PX = 3  # max |offset| of the box center from the cell center, per axis
MIN_GAP_PX = 2  # black pixels between the boxes of two objects (>= 1 at 32 px)
GRID = 3

POSITIONS = (
    ("at the top left", "at the top", "at the top right"),
    ("on the left", "in the center", "on the right"),
    ("at the bottom left", "at the bottom", "at the bottom right"),
)

HELDOUT_PAIRS = (("green", "triangle"), ("purple", "circle"), ("yellow", "square"))
ALL_PAIRS = tuple((c, s) for c in COLOR_NAMES for s in SHAPES)
SEEN_PAIRS = tuple(p for p in ALL_PAIRS if p not in HELDOUT_PAIRS)

SPLITS = ("train", "validation", "heldout")
DEFAULT_SPLIT_SIZES = {"train": 50_000, "validation": 2_000, "heldout": 2_000}


def dataset_name(resolution: int = 64, train_size: int | None = None,
                 validation_size: int | None = None, heldout_size: int | None = None) -> str:
  """The `data.name` of a shapes dataset (built on first use by the data
  pipeline); sizes default to the spec's. Same as `tfds_builder.config_name`,
  without importing tfds into config files."""
  sizes = DEFAULT_SPLIT_SIZES
  train_size = sizes["train"] if train_size is None else train_size
  validation_size = sizes["validation"] if validation_size is None else validation_size
  heldout_size = sizes["heldout"] if heldout_size is None else heldout_size
  return f"shapes/res{resolution}_train{train_size}_val{validation_size}_heldout{heldout_size}"
_SPLIT_SEEDS = {"train": 1, "validation": 2, "heldout": 3}
_DATASET_SEED = 20_240_601
_MAX_DRAWS = 10_000  # rejection loops end long before this; it guards against bugs


@dataclasses.dataclass(frozen=True, order=True)
class ShapeObject:
  """One object of a caption: what is drawn and in which cell."""
  shape: str
  color: str
  size: str
  row: int
  col: int

  def __post_init__(self):
    if self.shape not in SHAPES:
      raise ValueError(f"unknown shape {self.shape!r}; expected one of {SHAPES}")
    if self.color not in COLORS:
      raise ValueError(f"unknown color {self.color!r}; expected one of {COLOR_NAMES}")
    if self.size not in SIZES:
      raise ValueError(f"unknown size {self.size!r}; expected one of {SIZES}")
    for name in ("row", "col"):
      value = getattr(self, name)
      if not (isinstance(value, (int, np.integer)) and 0 <= value < GRID):
        raise ValueError(f"{name} must be an int in [0, {GRID}), got {value!r}")
    # Normalise numpy ints so equality and hashing are plain-python.
    object.__setattr__(self, "row", int(self.row))
    object.__setattr__(self, "col", int(self.col))

  @property
  def cell(self) -> tuple[int, int]:
    return (self.row, self.col)

  def phrase(self) -> str:
    return f"a {self.size} {self.color} {self.shape} {POSITIONS[self.row][self.col]}"

  def as_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Scene:
  """Objects in reading order plus their box origins (x, y) in base pixels."""
  objects: tuple[ShapeObject, ...]
  origins: tuple[tuple[int, int], ...]

  @property
  def caption(self) -> str:
    return build_caption(self.objects)

  def boxes(self, resolution: int = BASE_RESOLUTION) -> list[tuple[int, int, int]]:
    """(x0, y0, side) of each object's bounding box at `resolution`."""
    check_resolution(resolution)
    out = []
    for obj, (x, y) in zip(self.objects, self.origins):
      out.append((x * resolution // BASE_RESOLUTION, y * resolution // BASE_RESOLUTION,
                  SIZE_PX[obj.size] * resolution // BASE_RESOLUTION))
    return out


def check_resolution(resolution: int) -> None:
  if resolution not in RESOLUTIONS:
    raise ValueError(f"resolution must be one of {RESOLUTIONS}, got {resolution!r}")


def check_split(split: str) -> None:
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")


# ---- sampling ---------------------------------------------------------------

def _box_origin(cell: int, side: int, jitter: int) -> int:
  """Left (or top) pixel of a box of `side` centred in `cell` plus `jitter`.

  The cell center is (2 cell + 1) * 64 / 6; integer arithmetic rounds
  `center - side / 2` to the nearest pixel without float ties, and the result
  is clamped so the box stays on the canvas.
  """
  start = ((2 * cell + 1) * BASE_RESOLUTION - 3 * side + 3) // 6 + jitter
  return min(max(start, 0), BASE_RESOLUTION - side)


def _separated(a: tuple[int, int, int], b: tuple[int, int, int]) -> bool:
  (ax, ay, asz), (bx, by, bsz) = a, b
  gap_x = max(bx - (ax + asz), ax - (bx + bsz))
  gap_y = max(by - (ay + asz), ay - (by + bsz))
  return max(gap_x, gap_y) >= MIN_GAP_PX


def example_rng(split: str, index: int) -> np.random.Generator:
  """The RNG of one example: any example can be drawn on its own."""
  check_split(split)
  if index < 0:
    raise ValueError(f"index must be >= 0, got {index}")
  return np.random.default_rng([_DATASET_SEED, _SPLIT_SEEDS[split], int(index)])


def sample_scene(split: str, index: int) -> Scene:
  """Example `index` of `split` (independent of the split's size)."""
  rng = example_rng(split, index)
  num = int(rng.integers(1, 3))
  cells = [int(c) for c in rng.choice(GRID * GRID, size=num, replace=False)]
  if split == "heldout":
    # Uniform over all pairs, conditioned on at least one held-out pair.
    for _ in range(_MAX_DRAWS):
      pairs = [ALL_PAIRS[int(i)] for i in rng.integers(len(ALL_PAIRS), size=num)]
      if any(p in HELDOUT_PAIRS for p in pairs):
        break
    else:
      raise RuntimeError("heldout pair sampling did not terminate")
  else:
    pairs = [SEEN_PAIRS[int(i)] for i in rng.integers(len(SEEN_PAIRS), size=num)]
  sizes = [SIZES[int(i)] for i in rng.integers(len(SIZES), size=num)]

  for _ in range(_MAX_DRAWS):
    jitter = rng.integers(-JITTER_PX, JITTER_PX + 1, size=(num, 2))
    boxes = []
    for (cell, size, (jx, jy)) in zip(cells, sizes, jitter):
      side = SIZE_PX[size]
      row, col = divmod(cell, GRID)
      boxes.append((_box_origin(col, side, int(jx)), _box_origin(row, side, int(jy)), side))
    if num == 1 or _separated(boxes[0], boxes[1]):
      break
  else:
    raise RuntimeError("jitter sampling did not terminate")

  items = []
  for cell, (color, shape), size, box in zip(cells, pairs, sizes, boxes):
    row, col = divmod(cell, GRID)
    items.append((ShapeObject(shape, color, size, row, col), (box[0], box[1])))
  items.sort(key=lambda item: item[0].cell)  # reading order
  return Scene(tuple(o for o, _ in items), tuple(xy for _, xy in items))


# ---- rendering --------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def shape_mask(shape: str, height: int, width: int) -> np.ndarray:
  """Boolean mask of `shape` filling a height x width box (read-only, cached).

  Exact integer tests on pixel centres: a circle (an ellipse for a non-square
  box) keeps the centres inside it; a triangle (apex up, base = box width)
  fills a row's pixels whose centres lie within the triangle's half-width at
  the row's lower edge, so the apex row is never empty and the bounding box of
  every mask is the full box.
  """
  if shape not in SHAPES:
    raise ValueError(f"unknown shape {shape!r}")
  y, x = np.mgrid[0:height, 0:width]
  dx = np.abs(2 * x + 1 - width)  # 2 * |pixel centre - box centre| in x
  if shape == "square":
    mask = np.ones((height, width), bool)
  elif shape == "circle":
    dy = np.abs(2 * y + 1 - height)
    mask = dx * dx * height * height + dy * dy * width * width <= width * width * height * height
  else:
    mask = dx * height <= (y + 1) * width
  mask.setflags(write=False)
  return mask


def render(scene: Scene, resolution: int = BASE_RESOLUTION) -> np.ndarray:
  """uint8 (resolution, resolution, 3) image of `scene`; flat colors on black."""
  image = np.zeros((resolution, resolution, 3), np.uint8)
  for obj, (x, y, side) in zip(scene.objects, scene.boxes(resolution)):
    window = image[y:y + side, x:x + side]
    window[shape_mask(obj.shape, side, side)] = COLORS[obj.color]
  return image


# ---- captions -----------------------------------------------------------------

def build_caption(objects: Iterable[ShapeObject]) -> str:
  """Caption of `objects`: phrases in reading order of cells, joined by ' and '."""
  objects = sorted(objects, key=lambda o: o.cell)
  if not objects:
    raise ValueError("a caption needs at least one object")
  return " and ".join(o.phrase() for o in objects)


_CELL_OF_POSITION = {p: (r, c) for r, row in enumerate(POSITIONS) for c, p in enumerate(row)}
_PHRASE_RE = re.compile(
    "a (?P<size>{}) (?P<color>{}) (?P<shape>{}) (?P<position>{})".format(
        "|".join(SIZES), "|".join(COLOR_NAMES), "|".join(SHAPES),
        "|".join(sorted(_CELL_OF_POSITION, key=len, reverse=True))))


def parse_caption(text: str) -> list[ShapeObject]:
  """Objects of a caption, in caption order (inverse of `build_caption`).

  Case, surrounding/repeated whitespace and a final period are forgiven;
  anything else outside the grammar raises ValueError naming the bad part.
  """
  if not isinstance(text, str):
    raise ValueError(f"caption must be a string, got {type(text).__name__}")
  norm = " ".join(text.lower().split()).rstrip(".").strip()
  if not norm:
    raise ValueError("empty caption")
  objects, cells = [], set()
  for part in norm.split(" and "):
    match = _PHRASE_RE.fullmatch(part)
    if match is None:
      raise ValueError(
          f"cannot parse {part!r} in caption {text!r}; expected "
          "'a {small|large} {color} {circle|square|triangle} {position}'")
    row, col = _CELL_OF_POSITION[match["position"]]
    if (row, col) in cells:
      raise ValueError(f"caption {text!r} puts two objects {match['position']}")
    cells.add((row, col))
    objects.append(ShapeObject(match["shape"], match["color"], match["size"], row, col))
  return objects


def objects_from_features(objects: Mapping[str, Sequence[Any]]) -> list[ShapeObject]:
  """Objects from a decoded `objects` feature (dict of per-object sequences).

  Accepts ClassLabel ids (as the TFDS builder stores them) or names
  (str/bytes) for shape, color and size.
  """
  def name(value, names):
    if isinstance(value, bytes):
      return value.decode()
    if isinstance(value, str):
      return value
    return names[int(value)]

  fields = ("shape", "color", "size", "row", "col")
  missing = [f for f in fields if f not in objects]
  if missing:
    raise ValueError(f"objects feature lacks {missing}")
  count = len(objects["shape"])
  if any(len(objects[f]) != count for f in fields):
    raise ValueError("objects feature has fields of different lengths")
  return [
      ShapeObject(name(objects["shape"][i], SHAPES), name(objects["color"][i], COLOR_NAMES),
                  name(objects["size"][i], SIZES), int(objects["row"][i]), int(objects["col"][i]))
      for i in range(count)
  ]
