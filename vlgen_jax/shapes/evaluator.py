"""The `shapes` evaluator: does each image show what its caption says?

Registered as "shapes" in `vlgen_jax/eval/evaluators.py`; used by runs whose
data is shapes (`config.evaluators = ("shapes",)`). Captions outside the
shapes grammar (e.g. "" for unconditional samples) are not scored.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from vlgen_jax.shapes import detector, fidelity, scenes


class ShapesEvaluator:
  name = "shapes"

  def score(self, images: Sequence[np.ndarray], captions: Sequence[str]) -> list[dict | None]:
    scores = []
    for image, caption in zip(images, captions):
      try:
        objects = scenes.parse_caption(caption)
      except ValueError:
        scores.append(None)
        continue
      scores.append(fidelity.score(image, objects))
    return scores

  def summarize(self, scores: Sequence[dict]) -> dict[str, Any]:
    return fidelity.summarize(scores)

  def satisfied(self, score: dict) -> bool:
    return bool(score["satisfied"])

  def describe(self, score: dict) -> str:
    return detector.describe(score["detections"])
