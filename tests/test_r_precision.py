"""R-precision's candidate sets and ranking (the scorer is exercised end to end
in tests/test_caption_cli.py)."""
import numpy as np
import pytest

from vlgen_jax.errors import UserError
from vlgen_jax.eval import r_precision as rp


def test_candidate_sets_hold_the_own_caption_first_and_distinct_others():
  captions = [f"c{i % 30}" for i in range(90)]  # duplicates of every caption
  sets = rp.candidate_sets(captions, R=10, seed=0)
  assert sets.shape == (90, 10)
  for caption, row in zip(captions, sets):
    assert row[0] == caption
    assert len(set(row)) == 10  # no duplicate of the own caption, no repeats
  np.testing.assert_array_equal(sets, rp.candidate_sets(captions, R=10, seed=0))
  assert not np.array_equal(sets, rp.candidate_sets(captions, R=10, seed=1))
  # Every other caption is drawn: the draw covers the pool.
  assert set(sets[:, 1:].ravel()) == set(captions)
  with pytest.raises(UserError, match="at least 31 distinct captions"):
    rp.candidate_sets(captions, R=31, seed=0)


def test_ranks_count_ties_against_the_true_caption():
  scores = np.array([[3.0, 1.0, 2.0], [1.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
  np.testing.assert_array_equal(rp.ranks(scores), [0, 1, 2])


class _TableScorer:
  """Scores caption c for image i as table[i][c]; the prior as prior[c]."""

  def __init__(self, table, prior):
    self.table, self.prior_table = table, prior

  def score_candidates(self, image_tokens, candidates):
    return np.array([[self.table[int(i)][c] for c in row]
                     for i, row in zip(image_tokens[:, 0], candidates)])

  def prior(self, captions):
    return np.array([self.prior_table[c] for c in captions])


def test_pmi_removes_a_caption_prior_that_likelihood_cannot():
  captions = ["a", "b", "c", "d"]
  # Each image raises its own caption by 1 over the prior; "d" is a priori far likelier.
  prior = {"a": -5.0, "b": -5.0, "c": -5.0, "d": -1.0}
  table = [{c: prior[c] + (1.0 if c == own else 0.0) for c in captions} for own in captions]
  images = np.arange(4)[:, None]
  scorer = _TableScorer(table, prior)
  plain = rp.r_precision(scorer, images, captions, R=4, pmi=False, top=(1, 2))
  pmi = rp.r_precision(scorer, images, captions, R=4, pmi=True, top=(1, 2))
  assert plain["top1"] == 0.25  # only image "d" wins on likelihood
  assert pmi["top1"] == 1.0 and pmi["R"] == 4 and pmi["n"] == 4
