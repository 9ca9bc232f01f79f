"""The statistics of the shapes benchmarks: benchmarks/diversity_shapes.py
(the data's spread is the jitter's standard deviation, copies have none, and
only satisfied samples count) and benchmarks/rerank_shapes.py (each rule's
kept candidate, the agreement test's precision and recall)."""
import importlib.util
import pathlib

import numpy as np
import pytest

from vlgen_jax.shapes import scenes

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load(name: str):
  spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "benchmarks" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def bench():
  return _load("diversity_shapes")


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


def test_rerank_judge_counts_the_kept_candidate_of_each_rule():
  bench = _load("rerank_shapes")
  # Row 0: the first agreeing candidate (1) fails, the best-scored (2) passes.
  # Row 1: nothing agrees, so both rules keep the best-scored (0), which passes.
  # Row 2: the first agreeing candidate (0) passes, the best-scored (1) fails.
  ok = np.array([[True, False, True], [True, False, False], [True, False, False]])
  agree = np.array([[False, True, True], [False, False, False], [True, False, False]])
  scores = np.array([[-3.0, -2.0, -1.0], [-1.0, -2.0, -3.0], [-2.0, -1.0, -3.0]])
  judged = bench.judge(scores, agree, ok)
  assert judged["consistent"] == pytest.approx(2 / 3)
  assert judged["best"] == pytest.approx(2 / 3)
  # Agreeing: (0,1) fails, (0,2) passes, (2,0) passes; passing: 4, of which 2 agree.
  assert judged["agree_precision"] == pytest.approx(2 / 3)
  assert judged["agree_recall"] == pytest.approx(1 / 2)
  assert judged["agree_fraction"] == pytest.approx(3 / 9)
  assert "contrastive" not in judged
  # Contrasts: row 0 keeps agreeing candidate 2 (higher contrast), row 1 (none
  # agrees) candidate 0, row 2 the one agreeing candidate 0: all pass.
  contrast = np.array([[0.0, -1.0, 0.5], [2.0, 0.0, 0.0], [-5.0, 3.0, 3.0]])
  assert bench.judge(scores, agree, ok, contrast)["contrastive"] == pytest.approx(1.0)


@pytest.mark.parametrize("name", ["diversity_shapes", "rerank_shapes"])
def test_a_wrong_run_is_one_error_line(name, tmp_path):
  import os
  import subprocess
  import sys
  args = [sys.executable, str(REPO_ROOT / "benchmarks" / f"{name}.py"), "--workdir",
          str(tmp_path / "missing"), "--plausibility", "0.1"]
  if name == "rerank_shapes":
    args += ["--scorers", str(tmp_path / "cap")]
  out = subprocess.run(args, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert out.returncode == 2, out.stderr
  assert out.stderr.strip().splitlines()[-1].startswith("error: ")
  assert "Traceback" not in out.stderr
