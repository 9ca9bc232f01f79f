"""Metrics of generated images that need a captioner run (any dataset):
R-precision of generated and real images, and Fréchet distance / KID.

"Real" images are the run's own token-dataset records of the same captions:
their VQ tokens for the captioner (R-precision, captioner features), and
their VQ reconstructions as pixels for Inception features (the token dataset
holds no pixels; this measures the t2i model against what its VQ can draw).
"""
from __future__ import annotations

from typing import Sequence

from vlgen_jax.eval import frechet
from vlgen_jax.eval.r_precision import r_precision


def scorer_metrics(scorer, generated_tokens, real_tokens, captions: Sequence[str], *,
                   R: int = 100, seed: int = 0) -> dict:
  """R-precision (top-1/top-5) of generated images and of the real images of
  the same captions (the ceiling). R is capped at the number of distinct captions."""
  R = min(R, len(set(captions)))
  gen = r_precision(scorer, generated_tokens, captions, R, seed)
  real = r_precision(scorer, real_tokens, captions, R, seed)
  return {"r_precision_R": R,
          **{f"r_precision_{k}": v for k, v in gen.items() if k.startswith("top")},
          **{f"r_precision_real_{k}": v for k, v in real.items() if k.startswith("top")}}


def frechet_metrics(real_features, generated_features, *, kid_subset: int = 1000) -> dict:
  """FD and KID between two feature sets (n, d)."""
  return {"fd": frechet.frechet_from_stats(frechet.FeatureStats.of(real_features),
                                           frechet.FeatureStats.of(generated_features)),
          "kid": frechet.kernel_distance(real_features, generated_features,
                                         subset_size=kid_subset)}
