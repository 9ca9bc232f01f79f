"""benchmarks/rerank_shapes.py's judgement of one draw: each rule's kept
candidate, and the agreement test's precision and recall."""
import importlib.util
import pathlib

import numpy as np
import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
  spec = importlib.util.spec_from_file_location(
      "rerank_shapes", REPO_ROOT / "benchmarks" / "rerank_shapes.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_judge_counts_the_kept_candidate_of_each_rule(bench):
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
