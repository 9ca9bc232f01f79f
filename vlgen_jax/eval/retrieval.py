"""Retrieval accuracy of generated images (no model, no detector).

Retrieval accuracy: sample i was generated from caption i, whose own image is
reference i. Is reference i the nearest of the R references to sample i?
Top-k counts it when fewer than k references are strictly nearer (ties go to
the sample's own reference).

Distance: L2 between images box-downsampled to `size` x `size` px (default
16) in [0, 1]. The downsampling keeps composition, colors and coarse shape
(what a caption pins down) and drops texture that a sampler is free to vary;
it also makes samples and references of different resolutions comparable.
Chance level is k / R.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

RETRIEVAL_SIZE = 16


def downsample(images: Sequence[np.ndarray], size: int = RETRIEVAL_SIZE) -> np.ndarray:
  """uint8 (H, W, 3) images -> float32 (n, size*size*3) in [0, 1] (box filter)."""
  out = np.empty((len(images), size * size * 3), np.float32)
  for i, im in enumerate(images):
    small = Image.fromarray(np.asarray(im, np.uint8)).convert("RGB").resize(
        (size, size), Image.Resampling.BOX)
    out[i] = np.asarray(small, np.float32).reshape(-1) / 255.0
  return out


def retrieval_ranks(samples: Sequence[np.ndarray], references: Sequence[np.ndarray], *,
                    size: int = RETRIEVAL_SIZE) -> np.ndarray:
  """Per sample i (< len(samples)): the number of references strictly nearer
  to it than reference i (0 = its own reference is the nearest)."""
  n, r = len(samples), len(references)
  if n == 0 or r < n:
    raise ValueError(f"need 1 <= len(samples) <= len(references), got {n} and {r}")
  s, ref = downsample(samples, size), downsample(references, size)
  # Squared L2 via |s|^2 - 2 s.r + |r|^2 in float64 (exact enough to rank ties).
  s, ref = s.astype(np.float64), ref.astype(np.float64)
  d = (s * s).sum(1)[:, None] - 2.0 * s @ ref.T + (ref * ref).sum(1)[None, :]
  own = d[np.arange(n), np.arange(n)]
  return (d < own[:, None] - 1e-9).sum(1)


def retrieval_accuracy(samples: Sequence[np.ndarray], references: Sequence[np.ndarray], *,
                       ks: Sequence[int] = (1, 5), size: int = RETRIEVAL_SIZE) -> dict:
  """{"top1": ..., "top5": ..., "R": number of references, "n": samples,
  "size": px of the comparison}; sample i belongs to reference i, and the
  candidates are all references (R >= n; extra references are distractors)."""
  ranks = retrieval_ranks(samples, references, size=size)
  out = {f"top{k}": float(np.mean(ranks < k)) for k in ks}
  out.update(R=len(references), n=len(samples), size=size)
  return out
