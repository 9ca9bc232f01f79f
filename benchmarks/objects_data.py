"""A captioned image dataset with real visual structure, for `vlgen demo --data`.

Rendered objects (sphere, cube, cylinder, cone, torus, pyramid) with Lambert
shading, a specular highlight and a surface texture (plain, striped, dotted,
checkered) on a background with a gradient (sky, sand, grass, night, brick),
at a position and size; each caption names what is drawn:

    "a large striped red sphere on the left, on grass"

Some (object, color) pairs never appear in train/ or validation/; they make
up heldout/ (evaluate with `vlgen encode --splits heldout` and
`vlgen eval --split heldout`).

    python benchmarks/objects_data.py --out DIR [--train 4000 --validation 400 --heldout 200]

Writes DIR/{train,validation,heldout}/ as captions.tsv + PNG folders.
Generic code never imports this file (it is data for a benchmark).
"""
from __future__ import annotations

import argparse
import os

import numpy as np
from PIL import Image

OBJECTS = ("sphere", "cube", "cylinder", "cone", "torus", "pyramid")
COLORS = {"red": (200, 40, 40), "green": (50, 170, 60), "blue": (40, 80, 210),
          "yellow": (230, 200, 40), "purple": (140, 60, 180), "orange": (240, 130, 30),
          "white": (230, 230, 230), "pink": (240, 130, 180)}
TEXTURES = ("plain", "striped", "dotted", "checkered")
BACKGROUNDS = {"sky": ((120, 170, 240), (220, 235, 255)), "sand": ((230, 200, 140), (190, 150, 90)),
               "grass": ((150, 210, 110), (50, 120, 40)), "night": ((10, 10, 40), (50, 40, 90)),
               "brick": ((170, 80, 60), (120, 50, 40))}
POSITIONS = {"on the left": 0.3, "in the center": 0.5, "on the right": 0.7}
SIZES = {"small": 0.2, "large": 0.34}
HELDOUT = (("cube", "red"), ("sphere", "green"), ("cone", "blue"), ("torus", "yellow"),
           ("cylinder", "purple"), ("pyramid", "white"))


def _texture(kind: str, u: np.ndarray, v: np.ndarray, rng) -> np.ndarray:
  """Albedo multiplier in [0.45, 1] from surface coordinates u, v."""
  f = rng.uniform(5, 7)
  if kind == "striped":
    return np.where(np.sin(u * f * 2) > 0, 1.0, 0.5)
  if kind == "dotted":
    return np.where((np.sin(u * f * 2) * np.sin(v * f * 2)) > 0.55, 0.45, 1.0)
  if kind == "checkered":
    return np.where(np.sin(u * f * 1.5) * np.sin(v * f * 1.5) > 0, 1.0, 0.55)
  return np.ones_like(u)


def render(obj: str, color, texture: str, background: str, cx: float, size: float,
           px: int, rng) -> np.ndarray:
  y, x = (np.mgrid[0:px, 0:px] + 0.5) / px
  top, bottom = (np.asarray(c, np.float64) for c in BACKGROUNDS[background])
  img = top * (1 - y[..., None]) + bottom * y[..., None]
  img = img + rng.normal(0, 6, img.shape)  # grain
  cy = 0.55 + rng.uniform(-0.04, 0.04)
  cx = cx + rng.uniform(-0.04, 0.04)
  dx, dy = (x - cx) / size, (y - cy) / size
  light = np.array([-0.5, -0.6, 0.62])
  light /= np.linalg.norm(light)
  mask = np.zeros((px, px), bool)
  shade = np.ones((px, px))
  u, v = dx, dy
  if obj == "sphere":
    r2 = dx ** 2 + dy ** 2
    mask = r2 < 1
    nz = np.sqrt(np.clip(1 - r2, 0, 1))
    shade = np.clip(-dx * -light[0] * -1 + dy * light[1] * -1 + nz * light[2], 0, 1)
    shade = np.clip(dx * light[0] + dy * light[1] + nz * light[2], 0, 1)
    u, v = np.arctan2(dy, dx) * 1.2, dy * 3
  elif obj == "cube":
    # Front face square plus a top and a right face (oblique projection).
    d = 0.35
    front = (np.abs(dx + 0.1) < 0.65) & (np.abs(dy - 0.1) < 0.65)
    topf = (dy < -0.55) & (dy > -0.55 - d) & (dx + 0.1 > -0.65 + (-0.55 - dy)) & \
        (dx + 0.1 < 0.65 + (-0.55 - dy))
    right = (dx > 0.55) & (dx < 0.55 + d) & (dy - 0.1 < 0.65 - (dx - 0.55)) & \
        (dy - 0.1 > -0.65 - (dx - 0.55))
    mask = front | topf | right
    shade = np.where(topf & ~front, 0.95, np.where(right & ~front, 0.45, 0.72))
    u, v = dx * 3, dy * 3
  elif obj == "cylinder":
    body = (np.abs(dx) < 0.7) & (np.abs(dy) < 0.8)
    cap = (dx / 0.7) ** 2 + ((dy + 0.8) / 0.25) ** 2 < 1
    base = (dx / 0.7) ** 2 + ((dy - 0.8) / 0.25) ** 2 < 1
    mask = body | cap | base
    shade = np.where(cap, 0.95, np.clip(0.35 + 0.65 * np.cos((dx / 0.7) * 1.3 + 0.5), 0, 1))
    u, v = np.arcsin(np.clip(dx / 0.7, -1, 1)) * 2, dy * 3
  elif obj == "cone":
    h = (dy + 0.9) / 1.7
    mask = (h > 0) & (h < 1) & (np.abs(dx) < 0.75 * h) | \
        ((dx / 0.75) ** 2 + ((dy - 0.8) / 0.2) ** 2 < 1)
    shade = np.clip(0.35 + 0.65 * np.cos(dx / np.maximum(0.75 * h, 1e-3) * 1.2 + 0.5), 0, 1)
    u, v = dx / np.maximum(h, 0.2) * 2, dy * 3
  elif obj == "torus":
    r = np.sqrt(dx ** 2 + (dy / 0.6) ** 2)
    mask = np.abs(r - 0.68) < 0.3
    t = (r - 0.68) / 0.3
    shade = np.clip(0.6 - 0.5 * t * np.sign(dy + 1e-6) + 0.3 * np.sqrt(np.clip(1 - t ** 2, 0, 1)),
                    0, 1)
    u, v = np.arctan2(dy, dx) * 2, t * 3
  elif obj == "pyramid":
    h = (dy + 0.85) / 1.7
    mask = (h > 0) & (h < 1) & (np.abs(dx) < 0.9 * h)
    shade = np.where(dx < -0.1 * h, 0.95, np.where(dx < 0.25 * h, 0.7, 0.45))
    u, v = dx * 3, dy * 3
  albedo = np.asarray(color, np.float64) * _texture(texture, u, v, rng)[..., None]
  lit = albedo * (0.25 + 0.75 * shade[..., None])
  if obj == "sphere":
    spec = np.clip(shade, 0, 1) ** 30 * 200
    lit = lit + spec[..., None]
  # Soft shadow under the object.
  sh = ((x - cx - 0.05) / (size * 1.1)) ** 2 + ((y - cy - size * 0.95) / (size * 0.25)) ** 2 < 1
  img = np.where((sh & ~mask)[..., None], img * 0.6, img)
  img = np.where(mask[..., None], lit, img)
  return np.clip(np.round(img), 0, 255).astype(np.uint8)


def make(n: int, rng, heldout: bool) -> list[tuple[np.ndarray, str, str]]:
  out = []
  held = set(HELDOUT)
  while len(out) < n:
    obj = OBJECTS[rng.integers(len(OBJECTS))]
    color = list(COLORS)[rng.integers(len(COLORS))]
    if ((obj, color) in held) != heldout:
      continue
    texture = TEXTURES[rng.integers(len(TEXTURES))]
    bg = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    pos = list(POSITIONS)[rng.integers(len(POSITIONS))]
    size = list(SIZES)[rng.integers(len(SIZES))]
    caption = f"a {size} {texture} {color} {obj} {pos}, on {bg}"
    out.append((caption, (obj, color, texture, bg, POSITIONS[pos], SIZES[size])))
  return out


def write_split(folder: str, items, px: int, rng) -> None:
  os.makedirs(folder, exist_ok=True)
  lines = []
  for i, (caption, (obj, color, texture, bg, cx, size)) in enumerate(items):
    name = f"{i:05d}.png"
    Image.fromarray(render(obj, COLORS[color], texture, bg, cx, size, px, rng)).save(
        os.path.join(folder, name))
    lines.append(f"{name}\t{caption}\n")
  with open(os.path.join(folder, "captions.tsv"), "w", encoding="utf-8") as f:
    f.writelines(lines)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", required=True)
  p.add_argument("--train", type=int, default=4000)
  p.add_argument("--validation", type=int, default=400)
  p.add_argument("--heldout", type=int, default=200)
  p.add_argument("--resolution", type=int, default=64)
  p.add_argument("--seed", type=int, default=0)
  a = p.parse_args()
  rng = np.random.default_rng(a.seed)
  for split, n, held in (("train", a.train, False), ("validation", a.validation, False),
                         ("heldout", a.heldout, True)):
    write_split(os.path.join(a.out, split), make(n, rng, held), a.resolution, rng)
    print(f"{split}: {n} images")


if __name__ == "__main__":
  main()
