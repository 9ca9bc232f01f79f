"""R-precision: does a caption-likelihood scorer pick an image's own caption
out of R candidates?

For image i with caption c_i, the candidates are c_i and R-1 distractors
drawn (without replacement, from `seed`) among the given captions whose text
differs from c_i: a duplicate of c_i is not a wrong answer. The scorer ranks
the R candidates; top-k is the fraction of images whose own caption scores
strictly above all but at most k-1 distractors (a tie counts against it).

The score is PMI by default, (log p(c | image) - log p(c | no image)) / n
(vlgen_jax/sample/captioner.py): plain likelihood prefers captions that are
common or short whatever the image, PMI asks how much the image raised them.

`scorer` is anything with `score_candidates(image_tokens (n, N), captions
(n, R) strings) -> (n, R)` conditional scores and `prior(captions) -> (n,)`
(e.g. `vlgen_jax.sample.captioner.Captioner`).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from vlgen_jax.errors import UserError


def candidate_sets(captions: Sequence[str], R: int, seed: int) -> np.ndarray:
  """(n, R) object array: row i = captions[i] then R-1 distinct other captions."""
  if R < 2:
    raise UserError(f"R-precision needs R >= 2 candidates, got {R}")
  pool = sorted(set(captions))
  index = {c: j for j, c in enumerate(pool)}
  if len(pool) < R:
    raise UserError(f"R-precision with R={R} needs at least {R} distinct captions, "
                    f"got {len(pool)}")
  rng = np.random.default_rng(seed)
  out = np.empty((len(captions), R), dtype=object)
  for i, caption in enumerate(captions):
    # Draw from the pool without the image's own caption.
    picks = rng.choice(len(pool) - 1, R - 1, replace=False)
    picks = picks + (picks >= index[caption])
    out[i, 0] = caption
    out[i, 1:] = [pool[j] for j in picks]
  return out


def ranks(scores: np.ndarray) -> np.ndarray:
  """(n, R) scores with the true caption in column 0 -> (n,) number of
  distractors scoring at least as high (0 = ranked first)."""
  scores = np.asarray(scores, np.float64)
  return np.sum(scores[:, 1:] >= scores[:, :1], axis=1)


def r_precision(scorer, image_tokens, captions: Sequence[str], R: int = 100, seed: int = 0, *,
                pmi: bool = True, top: Sequence[int] = (1, 5)) -> dict[str, float]:
  """Top-k R-precision of images (n, N) tokens with their captions (n,)."""
  captions = list(captions)
  if len(captions) != len(image_tokens):
    raise ValueError(f"{len(image_tokens)} images but {len(captions)} captions")
  cands = candidate_sets(captions, R, seed)
  scores = np.asarray(scorer.score_candidates(image_tokens, cands), np.float64)
  if pmi:
    pool = sorted(set(captions))
    prior = dict(zip(pool, np.asarray(scorer.prior(pool), np.float64)))
    scores = scores - np.vectorize(prior.__getitem__, otypes=[np.float64])(cands)
  r = ranks(scores)
  out = {f"top{k}": float(np.mean(r < k)) for k in top}
  out.update(R=R, n=len(captions))
  return out
