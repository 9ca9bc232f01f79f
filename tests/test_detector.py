"""Pixel detector and caption fidelity on `shapes` images."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from vlgen_jax.shapes import scenes
from vlgen_jax.shapes import detector, fidelity
from vlgen_jax.shapes.fidelity import ATTRIBUTES

PERFECT = {"fidelity": 1.0, "count": 1.0, "color": 1.0, "shape": 1.0, "size": 1.0,
           "position": 1.0}


def _records(builder, split, n):
  source = builder.as_data_source(split)
  return [source[i] for i in range(min(n, len(source)))]


@pytest.fixture(scope="module")
def train_records(shapes_data_dir):
  from vlgen_jax.shapes import tfds_builder
  builder = tfds_builder.prepare_shapes(shapes_data_dir, 64, 512, 64, 64)
  return _records(builder, "train", 500)


def test_builder_images_satisfy_their_captions_64px(train_records):
  images = [r["image"] for r in train_records]
  assert len(images) == 500
  by_caption = fidelity.fidelity(images, [r["caption"].decode() for r in train_records])
  by_objects = fidelity.fidelity(images, [r["objects"] for r in train_records])
  assert by_caption == by_objects == dict(PERFECT, n=500)


@pytest.mark.parametrize("resolution,n", [(32, 120), (128, 40)])
def test_builder_images_satisfy_their_captions(tmp_path, resolution, n):
  from vlgen_jax.shapes import tfds_builder
  builder = tfds_builder.prepare_shapes(tmp_path, resolution, n, 8, 8, progress=False)
  records = _records(builder, "train", n) + _records(builder, "heldout", 8)
  result = fidelity.fidelity([r["image"] for r in records], [r["caption"] for r in records])
  assert result == dict(PERFECT, n=n + 8)


def _other(values, current, index):
  choices = [v for v in values if v != current]
  return choices[index % len(choices)]


def _change(objects, attribute, index):
  """The objects with one attribute of one object changed (a still-valid caption)."""
  objects = list(objects)
  k = index % len(objects)
  o = objects[k]
  if attribute == "count":
    if len(objects) == 2:
      return objects[:1] if index % 2 else objects[1:]
    free = [c for c in range(9) if c != o.row * 3 + o.col]
    row, col = divmod(free[index % len(free)], 3)
    return objects + [scenes.ShapeObject("circle", "red", "small", row, col)]
  if attribute == "position":
    used = {x.cell for x in objects}
    free = [(r, c) for r in range(3) for c in range(3) if (r, c) not in used]
    row, col = free[index % len(free)]
    objects[k] = scenes.ShapeObject(o.shape, o.color, o.size, row, col)
  else:
    values = {"color": scenes.COLOR_NAMES, "shape": scenes.SHAPES, "size": scenes.SIZES}
    changed = o.as_dict()
    changed[attribute] = _other(values[attribute], changed[attribute], index)
    objects[k] = scenes.ShapeObject(**changed)
  return objects


@pytest.mark.parametrize("attribute", ["color", "shape", "size", "position", "count"])
def test_changing_one_attribute_breaks_fidelity(train_records, attribute):
  records = train_records[:200]
  images = [r["image"] for r in records]
  captions = [scenes.build_caption(_change(scenes.parse_caption(r["caption"].decode()),
                                           attribute, i))
              for i, r in enumerate(records)]
  result = fidelity.fidelity(images, captions)
  assert result["fidelity"] <= 0.05  # in fact 0: every changed caption is caught
  if attribute == "count":
    assert result["count"] == 0.0
  else:
    # One of each image's objects is wrong in exactly that attribute.
    n_objects = sum(len(scenes.parse_caption(c)) for c in captions)
    assert result[attribute] == pytest.approx(1 - len(records) / n_objects)
    assert result["count"] == 1.0
    for other in set(ATTRIBUTES) - {attribute}:
      assert result[other] == 1.0


def _corrupt(images, kind, amount, seed=0):
  rng = np.random.default_rng(seed)
  out = []
  for image in images:
    x = image.astype(np.float32)
    if kind == "noise":
      x = x + rng.normal(0.0, amount, x.shape)
    elif kind == "blur":
      x = ndimage.gaussian_filter(x, (amount, amount, 0))
    elif kind == "drift":  # every object pixel shifted by one random RGB offset
      x = x + (x.sum(-1, keepdims=True) > 0) * rng.uniform(-amount, amount, 3)
    out.append(np.clip(x, 0, 255).round().astype(np.uint8))
  return out


@pytest.mark.parametrize("kind,amount", [("noise", 20.0), ("blur", 1.0), ("drift", 30.0)])
def test_detector_tolerates_mild_corruption_64px(train_records, kind, amount):
  records = train_records[:150]
  images = _corrupt([r["image"] for r in records], kind, amount)
  result = fidelity.fidelity(images, [r["objects"] for r in records])
  assert result["fidelity"] >= 0.98, result


def test_detector_fails_on_heavy_blur(train_records):
  # The tolerance is bounded: a 4 px blur erases small objects' shapes.
  records = train_records[:60]
  images = _corrupt([r["image"] for r in records], "blur", 4.0)
  assert fidelity.fidelity(images, [r["objects"] for r in records])["fidelity"] < 0.5


def test_noise_alone_is_not_an_object():
  images = _corrupt([np.zeros((64, 64, 3), np.uint8)] * 20, "noise", 30.0)
  assert all(detector.detect(im) == [] for im in images)


def test_detection_fields():
  scene = scenes.Scene(
      (scenes.ShapeObject("triangle", "purple", "large", 0, 2),
       scenes.ShapeObject("circle", "white", "small", 2, 0)),
      ((39, 3), (5, 47)))
  found = detector.detect(scenes.render(scene, 64))
  assert [d.key() for d in found] == [("triangle", "purple", "large", 0, 2),
                                      ("circle", "white", "small", 2, 0)]
  assert found[0].bbox == (39, 3, 61, 25) and found[1].bbox == (5, 47, 17, 59)
  assert found[0].area == scenes.shape_mask("triangle", 22, 22).sum()
  assert found[0].shape_iou == 1.0
  assert [d.to_object() for d in found] == list(scene.objects)


@pytest.mark.parametrize("side,size", [(15, "small"), (17, "small"), (18, "large"), (20, "large")])
def test_size_threshold_is_halfway(side, size):
  image = np.zeros((64, 64, 3), np.uint8)
  image[20:20 + side, 20:20 + side] = scenes.COLORS["red"]
  (found,) = detector.detect(image)
  assert (found.shape, found.size) == ("square", size)


def test_odd_blobs_are_objects_of_unknown_shape():
  image = np.zeros((64, 64, 3), np.uint8)
  image[10:40, 30:36] = scenes.COLORS["blue"]  # a bar, 5:1
  image[44:60, 4:20] = scenes.COLORS["green"]
  image[45:60, 4:20:2] = 0  # a comb: square box, half filled
  found = detector.detect(image)
  assert [(d.shape, d.color) for d in found] == [("unknown", "blue"), ("unknown", "green")]
  assert found[0].to_object() is None
  result = fidelity.score(image, "a large blue square at the top")
  assert not result["satisfied"] and not result["count"]


def test_score_matches_objects_to_explain_failures():
  objects = [scenes.ShapeObject("square", "red", "small", 0, 0),
             scenes.ShapeObject("circle", "blue", "large", 1, 1)]
  good = scenes.Scene(tuple(objects), ((5, 5), (21, 21)))
  image = scenes.render(good, 64)
  result = fidelity.score(image, objects)
  assert result["satisfied"] and result["count"] and result["num_detected"] == 2
  # The blue circle drawn yellow: only color is wrong, for one of two objects.
  recolored = scenes.Scene((objects[0], scenes.ShapeObject("circle", "yellow", "large", 1, 1)),
                           good.origins)
  result = fidelity.score(scenes.render(recolored, 64), objects)
  assert not result["satisfied"] and result["count"]
  assert {a: result[a] for a in ATTRIBUTES} == {"shape": 1.0, "color": 0.5, "size": 1.0,
                                                "position": 1.0}
  # Only the circle drawn: the red square is unmatched, wrong in every attribute.
  alone = scenes.Scene(objects[1:], good.origins[1:])
  result = fidelity.score(scenes.render(alone, 64), [o.as_dict() for o in objects])
  assert not result["satisfied"] and not result["count"]
  assert {a: result[a] for a in ATTRIBUTES} == dict.fromkeys(ATTRIBUTES, 0.5)


def test_fidelity_micro_averages_over_objects():
  one = scenes.Scene((scenes.ShapeObject("square", "red", "small", 0, 0),), ((5, 5),))
  two = scenes.sample_scene("train", 1)
  assert len(two.objects) == 2
  images = [scenes.render(one, 64), scenes.render(two, 64)]
  wrong_one = "a small red square at the bottom right"
  result = fidelity.fidelity(images, [wrong_one, two.caption])
  # 1 of 2 images satisfied; 1 of 3 objects in a wrong position.
  assert result == {"fidelity": 0.5, "count": 1.0, "color": 1.0, "shape": 1.0, "size": 1.0,
                    "position": pytest.approx(2 / 3), "n": 2}


def test_bad_inputs_raise_value_error():
  image = np.zeros((64, 64, 3), np.uint8)
  with pytest.raises(ValueError, match="2 captions"):
    fidelity.fidelity([image], ["a small red square at the top", "a small red square at the top"])
  with pytest.raises(ValueError, match="square"):
    detector.detect(np.zeros((64, 32, 3), np.uint8))
  with pytest.raises(ValueError, match="uint8"):
    detector.detect(np.zeros((64, 64, 3), np.float32))
  with pytest.raises(ValueError, match="parse"):
    fidelity.score(image, "a red blob")


def test_classify_pixels_equals_its_definition(train_records):
  # Reference: nearest ray {a c} over all colors, computed on every pixel with
  # an explicit (H, W, C, 3) difference; the detector skips dark pixels.
  palette = np.array([scenes.COLORS[c] for c in scenes.COLOR_NAMES], np.float64)
  images = (_corrupt([r["image"] for r in train_records[:10]], "noise", 30.0) +
            _corrupt([r["image"] for r in train_records[10:20]], "blur", 1.5))
  for image in images:
    p = image.astype(np.float64)
    alpha = (p[:, :, None, :] * palette).sum(-1) / (palette**2).sum(-1)
    dist = np.linalg.norm(p[:, :, None, :] - np.minimum(alpha, 1)[..., None] * palette, axis=-1)
    nearest = dist.argmin(-1)
    ok = ((np.take_along_axis(alpha, nearest[..., None], -1)[..., 0] >= 0.5) &
          (np.take_along_axis(dist, nearest[..., None], -1)[..., 0] <= 80.0))
    np.testing.assert_array_equal(detector.classify_pixels(image),
                                  np.where(ok, nearest, -1))
