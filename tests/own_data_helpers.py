"""A small non-shapes dataset made in the test: procedural textures
(stripes, checks, rings, dots) in two colors, captioned in a grammar of
its own ("orange and teal rings, fine"), written as a captions.tsv folder
or as WebDataset tar shards."""
from __future__ import annotations

import io
import os
import tarfile

import numpy as np
from PIL import Image

PATTERNS = ("stripes", "checks", "rings", "dots")
COLORS = {"orange": (240, 140, 20), "teal": (20, 150, 150), "violet": (140, 60, 200),
          "ivory": (240, 235, 210), "black": (15, 15, 15)}
SCALES = {"fine": 4, "coarse": 10}


def texture(pattern: str, fg, bg, period: int, px: int, phase: int) -> np.ndarray:
  y, x = np.mgrid[0:px, 0:px]
  if pattern == "stripes":
    on = ((x + phase) // period) % 2 == 0
  elif pattern == "checks":
    on = (((x + phase) // period) + (y // period)) % 2 == 0
  elif pattern == "rings":
    r = np.hypot(x - px / 2 + 0.5, y - px / 2 + 0.5)
    on = ((r + phase) // period) % 2 == 0
  else:
    on = (((x + phase) % (2 * period)) < period // 2 + 1) & ((y % (2 * period)) < period // 2 + 1)
  out = np.where(on[..., None], np.asarray(fg, np.uint8), np.asarray(bg, np.uint8))
  return out.astype(np.uint8)


def make_examples(n: int, px: int = 32, seed: int = 0) -> list[tuple[np.ndarray, str]]:
  rng = np.random.default_rng(seed)
  names = list(COLORS)
  out = []
  for _ in range(n):
    pattern = PATTERNS[rng.integers(len(PATTERNS))]
    a, b = rng.choice(len(names), 2, replace=False)
    scale = list(SCALES)[rng.integers(len(SCALES))]
    image = texture(pattern, COLORS[names[a]], COLORS[names[b]], SCALES[scale], px,
                    int(rng.integers(0, 8)))
    out.append((image, f"{names[a]} and {names[b]} {pattern}, {scale}"))
  return out


def _png(image: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="PNG")
  return buf.getvalue()


def write_folder(folder, examples, *, extra_lines: str = "") -> None:
  os.makedirs(folder, exist_ok=True)
  lines = []
  for i, (image, caption) in enumerate(examples):
    name = f"{i:05d}.png"
    with open(os.path.join(folder, name), "wb") as f:
      f.write(_png(image))
    lines.append(f"{name}\t{caption}\n")
  with open(os.path.join(folder, "captions.tsv"), "w", encoding="utf-8") as f:
    f.write("".join(lines) + extra_lines)


def write_tar_shards(folder, examples, *, per_shard: int = 64) -> None:
  os.makedirs(folder, exist_ok=True)
  for s in range(0, len(examples), per_shard):
    with tarfile.open(os.path.join(folder, f"{s // per_shard:05d}.tar"), "w") as tar:
      for i, (image, caption) in enumerate(examples[s:s + per_shard], start=s):
        for name, data in ((f"{i:06d}.png", _png(image)),
                           (f"{i:06d}.txt", caption.encode("utf-8"))):
          info = tarfile.TarInfo(name)
          info.size = len(data)
          tar.addfile(info, io.BytesIO(data))
