"""Evaluators of generated images, chosen by name (big_vision style).

An evaluator scores images against the captions that produced them, using
nothing but the images and captions (no model of the run): the `shapes`
detector is one. A t2i run lists the evaluators that apply to its data in
`config.evaluators`; `vlgen eval` and the in-training sample evaluation run
them. Dataset-agnostic metrics (loss, bits per token, reconstruction PSNR,
retrieval) live in `vlgen_jax/eval/evaluate.py` and `vlgen_jax/eval/retrieval.py` and
need no registration.

Protocol (duck-typed; see `vlgen_jax/shapes/evaluator.py`):
  name: str
  score(images, captions) -> list[dict | None]   per image; None = not scorable
  summarize(scores) -> dict[str, float]           over the scored images
  satisfied(score) -> bool                        frames the grid green / red
  describe(score) -> str                          one line for scores.jsonl
"""
from __future__ import annotations

import importlib
from typing import Any, Sequence

from vlgen_jax.errors import UserError

# name -> "module:Class". Plug-ins are imported only when named.
EVALUATORS = {
    "shapes": "vlgen_jax.shapes.evaluator:ShapesEvaluator",
}


def build(name: str):
  if name not in EVALUATORS:
    raise UserError(f"unknown evaluator {name!r}; registered: {', '.join(sorted(EVALUATORS))}")
  module_name, _, cls_name = EVALUATORS[name].partition(":")
  return getattr(importlib.import_module(module_name), cls_name)()


def build_all(names: Sequence[str]) -> list[Any]:
  return [build(str(n)) for n in names]


def run_all(evaluators, images, captions) -> tuple[dict[str, list], dict[str, dict]]:
  """({name: per-image scores}, {name: summary}); a summary is omitted when
  none of the captions could be scored by that evaluator."""
  per_image, summaries = {}, {}
  for ev in evaluators:
    scores = ev.score(images, captions)
    per_image[ev.name] = scores
    scored = [s for s in scores if s is not None]
    if scored:
      summaries[ev.name] = {**ev.summarize(scored), "unscored": len(scores) - len(scored)}
  return per_image, summaries
