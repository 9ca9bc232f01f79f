"""The `shapes` dataset: spec invariants, determinism, the TFDS build and the CLI."""
from __future__ import annotations

import collections
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from vlgen_jax.shapes import scenes

N_SCENES = 3000


@pytest.fixture(scope="module")
def train_scenes():
  return [scenes.sample_scene("train", i) for i in range(N_SCENES)]


def _cell_center(index: int) -> float:
  return (2 * index + 1) * scenes.BASE_RESOLUTION / 6


# ---- geometry ------------------------------------------------------------------

def test_boxes_follow_the_spec(train_scenes):
  offsets = collections.Counter()
  for scene in train_scenes:
    for obj, (x, y, side) in zip(scene.objects, scene.boxes(64)):
      assert side == {"small": 12, "large": 22}[obj.size]
      assert 0 <= x and x + side <= 64 and 0 <= y and y + side <= 64
      cx, cy = x + side / 2, y + side / 2
      # Jitter of up to 3 px around the cell center (+1/3 px from rounding the
      # cell center, 64/6 px, to whole pixels).
      assert abs(cx - _cell_center(obj.col)) <= 3 + 1 / 3 + 1e-9
      assert abs(cy - _cell_center(obj.row)) <= 3 + 1 / 3 + 1e-9
      # The box center lies in the object's cell.
      assert int(cx // (64 / 3)) == obj.col and int(cy // (64 / 3)) == obj.row
      if obj.size == "small":
        offsets[round(cx - _cell_center(obj.col))] += 1
  # Every jitter value in [-3, 3] occurs, roughly uniformly.
  assert sorted(offsets) == list(range(-3, 4))
  assert max(offsets.values()) < 1.3 * min(offsets.values())


def test_two_objects_use_different_cells_and_never_touch(train_scenes):
  pairs = [s for s in train_scenes if len(s.objects) == 2]
  assert pairs
  for scene in pairs:
    a, b = scene.objects
    assert a.cell != b.cell
    for resolution in scenes.RESOLUTIONS:
      (ax, ay, asz), (bx, by, bsz) = scene.boxes(resolution)
      gap = max(bx - ax - asz, ax - bx - bsz, by - ay - asz, ay - by - bsz)
      assert gap >= scenes.MIN_GAP_PX * resolution // 64, (scene, resolution)


@pytest.mark.parametrize("resolution", scenes.RESOLUTIONS)
def test_render_draws_each_object_in_its_box(train_scenes, resolution):
  palette = {tuple(c) for c in scenes.COLORS.values()} | {scenes.BACKGROUND}
  for scene in train_scenes[:200]:
    image = scenes.render(scene, resolution)
    assert image.shape == (resolution, resolution, 3) and image.dtype == np.uint8
    assert {tuple(p) for p in np.unique(image.reshape(-1, 3), axis=0).tolist()} <= palette
    painted = np.zeros(image.shape[:2], bool)
    for obj, (x, y, side) in zip(scene.objects, scene.boxes(resolution)):
      assert side == scenes.SIZE_PX[obj.size] * resolution // 64
      mask = np.all(image == scenes.COLORS[obj.color], axis=-1)
      if sum(o.color == obj.color for o in scene.objects) == 1:
        ys, xs = np.nonzero(mask)
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x, y, x + side, y + side)
      window = mask[y:y + side, x:x + side]
      np.testing.assert_array_equal(window, scenes.shape_mask(obj.shape, side, side))
      painted[y:y + side, x:x + side] |= window
    assert not np.any(image[~painted])  # background stays black


@pytest.mark.parametrize("side", [6, 11, 12, 22, 24, 44])
def test_shape_masks(side):
  square = scenes.shape_mask("square", side, side)
  circle = scenes.shape_mask("circle", side, side)
  triangle = scenes.shape_mask("triangle", side, side)
  assert square.all()
  for mask in (circle, triangle):  # each fills its whole bounding box
    assert mask.any(0).all() and mask.any(1).all()
    np.testing.assert_array_equal(mask, mask[:, ::-1])  # left-right symmetric
  np.testing.assert_array_equal(circle, circle[::-1])
  np.testing.assert_array_equal(circle, circle.T)
  if side >= 11:
    assert abs(circle.mean() - np.pi / 4) < 0.03
    assert abs(triangle.mean() - 0.5) < 0.1
  widths = triangle.sum(1)
  assert np.all(np.diff(widths) >= 0) and widths[-1] == side and widths[0] <= 2  # apex up
  for row in triangle:  # rows are contiguous runs
    cols = np.nonzero(row)[0]
    assert cols.max() - cols.min() + 1 == len(cols)


def test_resolutions_are_checked():
  scene = scenes.sample_scene("train", 0)
  with pytest.raises(ValueError, match="resolution"):
    scenes.render(scene, 48)


# ---- captions ------------------------------------------------------------------

_PHRASE = (r"a (small|large) (red|green|blue|yellow|purple|white) (circle|square|triangle) "
           r"(at the top left|at the top|at the top right|on the left|in the center|"
           r"on the right|at the bottom left|at the bottom|at the bottom right)")
_CAPTION = re.compile(f"{_PHRASE}( and {_PHRASE})?")


def test_captions_grammar_and_roundtrip(train_scenes):
  for scene in train_scenes:
    caption = scene.caption
    assert _CAPTION.fullmatch(caption), caption
    assert [o.cell for o in scene.objects] == sorted(o.cell for o in scene.objects)
    assert scenes.parse_caption(caption) == list(scene.objects)
    assert scenes.build_caption(reversed(scene.objects)) == caption  # reading order


def test_caption_examples_from_the_spec():
  objects = [scenes.ShapeObject("triangle", "white", "large", 2, 2),
             scenes.ShapeObject("square", "blue", "small", 1, 1)]
  caption = "a small blue square in the center and a large white triangle at the bottom right"
  assert scenes.build_caption(objects) == caption
  assert scenes.parse_caption(caption) == objects[::-1]
  assert scenes.parse_caption("a large red circle at the top left") == [
      scenes.ShapeObject("circle", "red", "large", 0, 0)]
  assert scenes.parse_caption("  A Large red circle   at the top.") == [
      scenes.ShapeObject("circle", "red", "large", 0, 1)]


@pytest.mark.parametrize("text", [
    "", "a huge red circle at the top", "a red circle at the top",
    "a small red circle at the top and", "a small red circle at the middle",
    "a small red circle at the top and a large blue square at the top",
    "a small red circle at the top, a large blue square on the left",
])
def test_parse_caption_rejects_bad_text(text):
  with pytest.raises(ValueError):
    scenes.parse_caption(text)


def test_shape_object_validates():
  with pytest.raises(ValueError, match="color"):
    scenes.ShapeObject("circle", "orange", "small", 0, 0)
  with pytest.raises(ValueError, match="row"):
    scenes.ShapeObject("circle", "red", "small", 3, 0)


# ---- splits ----------------------------------------------------------------------

def _pairs(scene):
  return {(o.color, o.shape) for o in scene.objects}


def test_heldout_pairs_only_in_heldout(train_scenes):
  heldout_pairs = set(scenes.HELDOUT_PAIRS)
  seen = collections.Counter()
  for scene in train_scenes + [scenes.sample_scene("validation", i) for i in range(2000)]:
    assert not _pairs(scene) & heldout_pairs, scene.caption
    seen.update(_pairs(scene))
  assert set(seen) == set(scenes.SEEN_PAIRS)  # all 15 others occur
  held = collections.Counter()
  for i in range(2000):
    scene = scenes.sample_scene("heldout", i)
    assert _pairs(scene) & heldout_pairs, scene.caption
    held.update(_pairs(scene))
  assert all(held[p] > 400 for p in heldout_pairs)
  assert set(held) == set(scenes.ALL_PAIRS)  # the other object may be any pair


@pytest.mark.parametrize("split,n", [("train", N_SCENES), ("heldout", 2000)])
def test_about_half_the_examples_have_one_object(split, n, train_scenes):
  examples = (train_scenes if split == "train"
              else [scenes.sample_scene(split, i) for i in range(n)])
  counts = collections.Counter(len(s.objects) for s in examples)
  assert set(counts) == {1, 2}
  assert abs(counts[1] / n - 0.5) < 0.03  # 3 sigma ~ 0.027 at n=3000


def test_sampling_is_deterministic_and_per_example():
  forward = [scenes.sample_scene("train", i) for i in range(50)]
  assert scenes.sample_scene("train", 37) == forward[37]  # independent of what ran before
  assert [scenes.sample_scene("train", i) for i in range(50)] == forward
  validation = [scenes.sample_scene("validation", i) for i in range(50)]
  assert sum(a == b for a, b in zip(forward, validation)) <= 2  # splits use other seeds
  assert scenes.render(forward[3], 64).tobytes() == scenes.render(forward[3], 64).tobytes()
  with pytest.raises(ValueError, match="split"):
    scenes.sample_scene("test", 0)


# ---- TFDS ----------------------------------------------------------------------

TINY = dict(resolution=64, train_size=512, validation_size=64, heldout_size=64)


def _array_records(builder) -> dict[str, bytes]:
  files = sorted(f for f in os.listdir(builder.data_dir) if ".array_record-" in f)
  return {f: open(os.path.join(builder.data_dir, f), "rb").read() for f in files}


def test_tfds_build_has_three_array_record_splits(shapes_data_dir):
  import tensorflow_datasets as tfds
  from vlgen_jax.shapes import tfds_builder
  builder = tfds_builder.prepare_shapes(shapes_data_dir, **TINY)
  name = builder.builder_config.name
  assert name == "res64_train512_val64_heldout64"
  assert builder.data_dir == os.path.join(shapes_data_dir, "shapes", name, scenes.VERSION)
  assert set(_array_records(builder)) == {f"shapes-{s}.array_record-00000-of-00001"
                                          for s in scenes.SPLITS}
  sources = tfds.data_source(f"shapes/{name}", data_dir=shapes_data_dir, download=False)
  assert {s: len(sources[s]) for s in scenes.SPLITS} == {
      "train": 512, "validation": 64, "heldout": 64}
  for split in scenes.SPLITS:
    source = sources[split]
    for index in (0, 1, len(source) - 1):
      record = source[index]
      scene = scenes.sample_scene(split, index)  # record i is example i
      np.testing.assert_array_equal(record["image"], scenes.render(scene, 64))
      assert record["caption"].decode() == scene.caption
      assert scenes.objects_from_features(record["objects"]) == list(scene.objects)


def _build_in_subprocess(data_dir, sizes: dict) -> str:
  """Builds in a fresh process; returns its last stdout line."""
  code = ("import sys; from vlgen_jax.shapes import tfds_builder as s; "
          f"b = s.prepare_shapes({str(data_dir)!r}, progress=False, **{sizes!r}); "
          "b.as_data_source('train')[0]; print('tensorflow' in sys.modules)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  return out.stdout.strip().splitlines()[-1]


def test_two_builds_are_byte_identical(tmp_path, shapes_data_dir):
  from vlgen_jax.shapes import tfds_builder
  small = dict(resolution=64, train_size=40, validation_size=8, heldout_size=8)
  # Another process: protobuf map order, hash seeds etc. must not leak into the files.
  _build_in_subprocess(tmp_path / "a", small)
  first = tfds_builder.shapes_builder(tmp_path / "a", **small)
  second = tfds_builder.prepare_shapes(tmp_path / "b", progress=False, **small)
  assert first.is_prepared()
  assert _array_records(first) == _array_records(second)
  # A smaller train split holds the first examples of a larger one.
  large = tfds_builder.prepare_shapes(shapes_data_dir, **TINY).as_data_source("train")
  for i, record in enumerate(first.as_data_source("train")):
    assert record["caption"] == large[i]["caption"]
    np.testing.assert_array_equal(record["image"], large[i]["image"])


def test_prepare_reuses_a_finished_build(tmp_path):
  from vlgen_jax.shapes import tfds_builder
  small = dict(resolution=32, train_size=4, validation_size=2, heldout_size=2)
  builder = tfds_builder.prepare_shapes(tmp_path, progress=False, **small)
  stamps = {f: os.stat(os.path.join(builder.data_dir, f)).st_mtime_ns
            for f in os.listdir(builder.data_dir)}
  again = tfds_builder.prepare_shapes(tmp_path, progress=False, **small)
  assert {f: os.stat(os.path.join(again.data_dir, f)).st_mtime_ns
          for f in os.listdir(again.data_dir)} == stamps
  other = tfds_builder.prepare_shapes(tmp_path, progress=False, **dict(small, train_size=5))
  assert other.data_dir != builder.data_dir  # sizes live in different directories
  assert other.as_data_source("train")[0]["image"].shape == (32, 32, 3)


def test_config_name_encodes_its_fields(tmp_path):
  from vlgen_jax.shapes import tfds_builder
  default = tfds_builder.Shapes(data_dir=str(tmp_path)).builder_config
  assert default.name == "res64_train50000_val2000_heldout2000"
  config = tfds_builder.ShapesConfig(resolution=32, train_size=1000)
  assert config.name == "res32_train1000_val2000_heldout2000"
  assert tfds_builder.Shapes.builder_configs[
      "res128_train50000_val2000_heldout2000"].resolution == 128
  with pytest.raises(ValueError, match="does not match"):
    tfds_builder.ShapesConfig(name="tiny", resolution=32)
  with pytest.raises(ValueError, match="heldout size"):
    tfds_builder.ShapesConfig(heldout_size=-1)


def test_bad_config_is_a_value_error(tmp_path):
  from vlgen_jax.shapes import tfds_builder
  with pytest.raises(ValueError, match="resolution"):
    tfds_builder.prepare_shapes(tmp_path, resolution=48)
  with pytest.raises(ValueError, match="train size"):
    tfds_builder.prepare_shapes(tmp_path, train_size=0)


def test_building_does_not_import_tensorflow(tmp_path):
  # TF must never claim an accelerator; not importing it at all guarantees that.
  assert _build_in_subprocess(tmp_path, dict(resolution=32, train_size=4, validation_size=2,
                                             heldout_size=2)) == "False"


# ---- CLI ----------------------------------------------------------------------

def test_cli_builds_and_summarises(tmp_path, capsys):
  from PIL import Image
  from vlgen_jax import cli
  argv = ["data", "shapes", "--data-dir", str(tmp_path), "--resolution", "32",
          "--train-size", "40", "--validation-size", "6", "--heldout-size", "6"]
  assert cli.main(argv) == 0
  out = capsys.readouterr().out
  name = "res32_train40_val6_heldout6"
  assert f"shapes {name} built in" in out
  assert os.path.join(str(tmp_path), "shapes", name, scenes.VERSION) in out
  assert "splits: train 40, validation 6, heldout 6" in out
  assert scenes.sample_scene("train", 0).caption in out
  hist = re.search(r"objects per example \(train\): 1 object: (\d+) .*2 objects: (\d+)", out)
  assert hist and int(hist[1]) + int(hist[2]) == 40
  assert int(hist[1]) == sum(len(scenes.sample_scene("train", i).objects) == 1 for i in range(40))
  assert re.search(r"\(train\):.*with a held-out pair: 0/40\n", out)
  assert re.search(r"\(validation\):.*with a held-out pair: 0/6\n", out)
  assert re.search(r"\(heldout\):.*with a held-out pair: 6/6\n", out)
  grid = tmp_path / f"shapes-{name}-train-grid.png"
  assert str(grid) in out
  assert Image.open(grid).size == (8 * (2 * 32 + 2) + 2, 5 * (2 * 32 + 2) + 2)  # 40 images: 5 rows
  assert cli.main(argv) == 0
  assert f"shapes {name} already built" in capsys.readouterr().out


def test_cli_rejects_bad_input(tmp_path, capsys):
  from vlgen_jax import cli
  assert cli.main(["data", "shapes", "--data-dir", str(tmp_path), "--train-size", "0"]) == 2
  assert "error: --train-size must be >= 1" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    cli.main(["data", "shapes", "--data-dir", str(tmp_path), "--resolution", "48"])
  not_a_dir = tmp_path / "file"
  not_a_dir.write_text("")
  assert cli.main(["data", "shapes", "--data-dir", str(not_a_dir), "--train-size", "2",
                   "--validation-size", "1", "--heldout-size", "1"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err[-1].startswith(f"error: cannot build shapes in {not_a_dir}")
