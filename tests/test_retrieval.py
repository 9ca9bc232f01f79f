"""Retrieval accuracy (vlgen_jax/eval/retrieval.py) on synthetic images with known answers."""
import numpy as np
import pytest

from vlgen_jax.eval import retrieval as metrics


def _flat(color, px=32):
  return np.full((px, px, 3), color, np.uint8)


def test_retrieval_exact_counts():
  # 10 references of distinct gray levels 0, 20, ..., 180.
  refs = [_flat(20 * i) for i in range(10)]
  # Samples 0-5 are their own reference + 3 gray levels (rank 0).
  samples = [_flat(20 * i + 3) for i in range(6)]
  samples.append(_flat(160))      # own is 120: 140, 160, 180 are nearer -> rank 3
  samples += [_flat(0)] * 3       # own 140, 160, 180: 7, 8, 9 grays are nearer
  ranks = metrics.retrieval_ranks(samples, refs)
  np.testing.assert_array_equal(ranks, [0, 0, 0, 0, 0, 0, 3, 7, 8, 9])
  out = metrics.retrieval_accuracy(samples, refs, ks=(1, 3, 5))
  assert out["top1"] == pytest.approx(0.6)
  assert out["top3"] == pytest.approx(0.6)
  assert out["top5"] == pytest.approx(0.7)
  assert (out["R"], out["n"], out["size"]) == (10, 10, metrics.RETRIEVAL_SIZE)


def test_retrieval_distractors_and_resolution():
  # References at 64 px, samples at 32 px: compared at 16 px, so a sample
  # that is its reference downscaled ranks first. Extra references (R > n)
  # are distractors; one equal to the own reference ties and does not count.
  rng = np.random.default_rng(0)
  refs = [np.kron(rng.integers(0, 256, (8, 8, 3)), np.ones((8, 8, 1))).astype(np.uint8)
          for _ in range(6)]
  samples = [r[::2, ::2] for r in refs[:4]]
  refs.append(refs[0].copy())  # a tie with sample 0's own reference
  out = metrics.retrieval_accuracy(samples, refs)
  assert out == {"top1": 1.0, "top5": 1.0, "R": 7, "n": 4, "size": 16}
  # Swapping two samples makes exactly those two miss top-1.
  swapped = [samples[1], samples[0], samples[2], samples[3]]
  assert metrics.retrieval_accuracy(swapped, refs)["top1"] == pytest.approx(0.5)


def test_retrieval_needs_enough_references():
  with pytest.raises(ValueError):
    metrics.retrieval_accuracy([_flat(0)] * 3, [_flat(0)] * 2)
