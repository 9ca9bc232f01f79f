"""benchmarks/diversity_shapes.py's statistics: the data's spread is the
jitter's standard deviation, copies have none, and only satisfied samples count."""
import importlib.util
import pathlib

import numpy as np
import pytest

from vlgen_jax.shapes import scenes

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
  spec = importlib.util.spec_from_file_location(
      "diversity_shapes", REPO_ROOT / "benchmarks" / "diversity_shapes.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_real_renders_spread_is_the_jitter_std(bench):
  rng = np.random.default_rng(0)
  objs = [scenes.ShapeObject("square", "red", "large", 1, 1),
          scenes.ShapeObject("circle", "blue", "small", 0, 2)]
  groups = [bench.box_centres(bench.real_renders(o, 200, rng, 64), [o] * 200) for o in objs]
  assert all(c is not None for g in groups for c in g)
  spread, used = bench.pooled_spread(groups)
  # Uniform integer jitter in [-3, 3]: std = sqrt((7**2 - 1) / 12) = 2.
  assert used == 2 and abs(spread - 2.0) < 0.15


def test_copies_have_no_spread_and_wrong_images_do_not_count(bench):
  obj = scenes.ShapeObject("triangle", "green", "large", 2, 0)
  copy = bench.real_renders(obj, 1, np.random.default_rng(1), 64)[0]
  blank = np.zeros_like(copy)
  centres = bench.box_centres([copy, copy, blank, copy], [obj] * 4)
  assert centres[2] is None and centres[0] == centres[1] == centres[3]
  assert bench.pooled_spread([centres]) == (0.0, 1)
  assert bench.pooled_spread([[centres[0], None]])[1] == 0
