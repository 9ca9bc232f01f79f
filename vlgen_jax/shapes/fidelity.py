"""Scores images against their captions with the pixel detector (docs/shapes.md).

An image *satisfies* its caption when the multiset of objects detected in it
equals the caption's objects exactly: same count and, object for object, the
same shape, color, size and cell. `fidelity` is the fraction of images that
satisfy their captions.

Per-attribute accuracies explain failures. Each image's expected objects are
matched one-to-one to its detections so that the total number of agreeing
attributes (shape, color, size, position) is maximal (Hungarian assignment);
then, over all expected objects of all images,
  color / shape / size / position accuracy
      = (# expected objects whose matched detection has the same value)
        / (# expected objects),
where an expected object left unmatched (too few detections) counts as wrong
for every attribute; `count` is the fraction of images whose number of
detections equals the number of expected objects. Extra detections lower
`count` and `fidelity` but not the attribute accuracies.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from scipy import optimize

from vlgen_jax.shapes import scenes
from vlgen_jax.shapes import detector

ATTRIBUTES = ("shape", "color", "size", "position")


def expected_objects(spec: Any) -> list[scenes.ShapeObject]:
  """Objects from a caption, a decoded `objects` feature, or a list of objects/dicts."""
  if isinstance(spec, (str, bytes)):
    return scenes.parse_caption(spec.decode() if isinstance(spec, bytes) else spec)
  if isinstance(spec, Mapping):
    return scenes.objects_from_features(spec)
  objects = []
  for item in spec:
    if isinstance(item, scenes.ShapeObject):
      objects.append(item)
    elif isinstance(item, Mapping):
      objects.append(scenes.ShapeObject(**{k: item[k] for k in ("shape", "color", "size",
                                                                   "row", "col")}))
    else:
      raise ValueError(f"cannot read an expected object from {item!r}")
  return objects


def _agrees(expected: scenes.ShapeObject, detected: detector.Detection) -> dict[str, bool]:
  return {
      "shape": expected.shape == detected.shape,
      "color": expected.color == detected.color,
      "size": expected.size == detected.size,
      "position": (expected.row, expected.col) == (detected.row, detected.col),
  }


def _attribute_hits(expected: Sequence[scenes.ShapeObject],
                    detected: Sequence[detector.Detection]) -> dict[str, int]:
  """Number of expected objects whose matched detection agrees, per attribute."""
  hits = dict.fromkeys(ATTRIBUTES, 0)
  if not expected or not detected:
    return hits
  agreement = np.array([[sum(_agrees(e, d).values()) for d in detected] for e in expected])
  rows, cols = optimize.linear_sum_assignment(agreement, maximize=True)
  for r, c in zip(rows, cols):
    for name, ok in _agrees(expected[r], detected[c]).items():
      hits[name] += int(ok)
  return hits


def _key(o) -> tuple:
  return (o.shape, o.color, o.size, o.row, o.col)


def _score(image: np.ndarray, objects: Sequence[scenes.ShapeObject],
           config: detector.DetectorConfig):
  if not objects:
    raise ValueError("expected at least one object")
  detections = detector.detect(image, config)
  satisfied = sorted(map(_key, objects)) == sorted(map(_key, detections))
  return satisfied, detections, _attribute_hits(objects, detections)


def score(image: np.ndarray, expected: Any,
          config: detector.DetectorConfig = detector.DetectorConfig()
          ) -> dict[str, Any]:
  """Scores one image against a caption (or its objects).

  Returns `satisfied` and `count` (bools), the fraction of expected objects
  whose matched detection agrees per attribute (`shape`, `color`, `size`,
  `position`), `num_expected`, `num_detected` and the `detections`.
  """
  objects = expected_objects(expected)
  satisfied, detections, hits = _score(image, objects, config)
  result: dict[str, Any] = {"satisfied": satisfied, "count": len(objects) == len(detections)}
  result.update({name: hits[name] / len(objects) for name in ATTRIBUTES})
  result.update(num_expected=len(objects), num_detected=len(detections), detections=detections)
  return result


def summarize(scores: Sequence[Mapping[str, Any]]) -> dict[str, float]:
  """Fidelity and per-attribute accuracies from per-image `score` results."""
  if not scores:
    raise ValueError("fidelity of no images is undefined")
  n = len(scores)
  total_objects = sum(s["num_expected"] for s in scores)
  out = {"fidelity": sum(bool(s["satisfied"]) for s in scores) / n,
         "count": sum(bool(s["count"]) for s in scores) / n}
  # score() reports per-image fractions of expected objects; weight them back to counts.
  out.update({name: sum(s[name] * s["num_expected"] for s in scores) / total_objects
              for name in ("color", "shape", "size", "position")})
  out["n"] = n
  return out


def fidelity(images: Iterable[np.ndarray], captions_or_objects: Iterable[Any],
             config: detector.DetectorConfig = detector.DetectorConfig()
             ) -> dict[str, float]:
  """Fidelity and per-attribute accuracies over images (see the module docstring).

  `captions_or_objects[i]` is a caption string, a decoded `objects` feature or
  a list of objects for `images[i]`. Returns fidelity, count, color, shape,
  size, position (fractions) and n (number of images).
  """
  images, specs = list(images), list(captions_or_objects)
  if len(images) != len(specs):
    raise ValueError(f"{len(images)} images but {len(specs)} captions/objects")
  return summarize([score(image, spec, config) for image, spec in zip(images, specs)])
