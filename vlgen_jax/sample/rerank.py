"""Parti-style reranking: sample N candidates per prompt, keep the one a
captioner scores highest.

The scorer reads the t2i run's image tokens directly, so both runs must
share the VQ (same codes) and the caption tokenizer (same ids); `check_pair`
says which differs in one line. All candidates of all prompts are sampled in
one `Generator.generate` call (fixed-size batches; candidate j of output i is
image i*N + j of the run's seed, so results do not depend on batching), then
scored in one batched call. The score is the length-normalised
log p(prompt | image); among candidates of one prompt the PMI prior
p(prompt | no image) is the same constant, so PMI would rank them alike.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from vlgen_jax.errors import UserError


def params_fingerprint(params) -> str:
  """Content hash of a param tree (which VQ, whatever its path)."""
  import hashlib
  import jax
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    h.update(jax.tree_util.keystr(path).encode())
    h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
  return h.hexdigest()[:16]


def check_pair(generator, scorer) -> None:
  """UserError unless the t2i run and the scorer share VQ and tokenizer."""
  if params_fingerprint(generator.vq.params) != params_fingerprint(scorer.vq.params):
    raise UserError(f"the scorer {scorer.run} reads codes of the VQ {scorer.vq_run}, the t2i run "
                    f"{generator.run} samples codes of another VQ; they must be the same VQ")
  if generator.tokenizer.fingerprint != scorer.tokenizer.fingerprint:
    raise UserError(f"the scorer {scorer.run} and the t2i run {generator.run} use different "
                    f"caption tokenizers")
  if (scorer.spec.image_grid != generator.spec.image_grid
      or scorer.spec.image_vocab_size != generator.spec.image_vocab_size):
    raise UserError(f"the scorer expects {scorer.spec.image_vocab_size} codes on "
                    f"{scorer.spec.image_grid}, the t2i run samples "
                    f"{generator.spec.image_vocab_size} on {generator.spec.image_grid}")


def check_candidates(candidates: int) -> None:
  if int(candidates) != candidates or candidates < 1:
    raise UserError(f"--candidates must be a positive integer, got {candidates}")


def check_arguments(scorer: str | None, candidates: int) -> None:
  """`--scorer` / `--candidates` of `vlgen sample` and `vlgen eval`."""
  check_candidates(candidates)
  if candidates > 1 and not scorer:
    raise UserError("--candidates > 1 needs --scorer RUN (a captioner run) to pick among them")


def load_scorer(path: str | None, generator):
  """The captioner run at `path`, checked against the t2i run (None for no path)."""
  if not path:
    return None
  from vlgen_jax.sample.captioner import Captioner
  scorer = Captioner.load(path)
  check_pair(generator, scorer)
  return scorer


def generate(generator, scorer, prompts: Sequence[str], options, *, candidates: int = 1,
             seed: int = 0, batch_size: int = 16, progress: Callable[[int], None] | None = None,
             first_index: int = 0):
  """(images, tokens, kept scores or None): plain sampling without a scorer,
  else the best of `candidates` per prompt (`generate_reranked`). Output i
  is the same whether made alone or as output `first_index + i` of a run."""
  if scorer is None:
    images, tokens = generator.generate(prompts, options, seed=seed, batch_size=batch_size,
                                        progress=progress, first_index=first_index)
    return images, tokens, None
  images, tokens, kept, _ = generate_reranked(generator, scorer, prompts, options,
                                              candidates=candidates, seed=seed,
                                              batch_size=batch_size, progress=progress,
                                              first_index=first_index)
  return images, tokens, kept


def generate_reranked(generator, scorer, prompts: Sequence[str], options, *, candidates: int,
                      seed: int = 0, batch_size: int = 16,
                      progress: Callable[[int], None] | None = None, first_index: int = 0):
  """One kept image per entry of `prompts`, the best of `candidates` samples.

  Returns (uint8 images (n, H, W, 3), tokens (n, N), scores (n,) of the kept
  ones, all scores (n, candidates)).
  """
  check_candidates(candidates)
  expanded = [p for p in prompts for _ in range(candidates)]
  images, tokens = generator.generate(expanded, options, seed=seed, batch_size=batch_size,
                                      progress=progress, first_index=first_index * candidates)
  scores = np.asarray(scorer.score(tokens, expanded)).reshape(len(prompts), candidates)
  best = np.argmax(scores, axis=1)
  keep = np.arange(len(prompts)) * candidates + best
  return images[keep], tokens[keep], scores[np.arange(len(prompts)), best], scores
