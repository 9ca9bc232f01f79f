"""Reranking: sample N candidates per prompt, keep one a captioner reads as
the prompt.

Three rules pick the kept candidate (`SELECTIONS`):
- "consistent" (default): the first candidate, in seed order, whose greedy
  caption is exactly the prompt (the captioner's argmax at every position of
  the teacher-forced prompt); if none is, the highest-scored one. This is
  rejection sampling with the captioner as the test, so the kept images are
  the model's own samples among those that pass: as varied as plain sampling.
- "best" (Parti): the highest-scored candidate. The captioner is most sure of
  typical images, so this also narrows the samples towards them (on shapes:
  objects drawn nearer their cell's centre; docs/captioning.md has numbers).
- "contrastive": among the candidates the captioner agrees with, the one
  with the highest `contrast`, the first in seed order among equals; if it
  agrees with none, the highest-scored one. A candidate's contrast is the
  lowest, over its image tokens and over the prompt's neighbours (the
  judge's training captions one word away: another colour, shape, place),
  of log p(token | prompt) - log p(token | neighbour) under the judge. A
  part drawn for a neighbour (a blue piece of a purple circle) makes it
  negative, even where the captioner reads the whole image as the prompt.
  With no neighbours it is 0 and the rule is "consistent". Equal contrasts
  are common (many candidates share their lowest token). Costs 1 +
  (neighbours, at most `MAX_NEIGHBOURS`) judge passes per candidate.

The judge is the sampled t2i run itself unless another is given (`--judge
RUN`: any family, same VQ and caption tokenizer). A causal judge sees only
the tokens before each one; a masked judge's pseudo-likelihood sees each
token's whole surround, so a piece that does not fit its object stands out
(docs/captioning.md measures both).

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

import collections
import functools
from typing import Callable, Sequence

import numpy as np

from vlgen_jax.errors import UserError

MAX_NEIGHBOURS = 16


def params_fingerprint(params) -> str:
  """Content hash of a param tree (which VQ, whatever its path)."""
  import hashlib
  import jax
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    h.update(jax.tree_util.keystr(path).encode())
    h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
  return h.hexdigest()[:16]


def check_pair(generator, other, role: str = "scorer") -> None:
  """UserError unless the t2i run and `other` (the scorer, or a judge) share
  VQ, caption tokenizer and token grid."""
  if params_fingerprint(generator.vq.params) != params_fingerprint(other.vq.params):
    vq = getattr(other, "vq_run", None)
    raise UserError(f"the {role} {other.run} reads codes of the VQ {vq or '(its own)'}, the t2i "
                    f"run {generator.run} samples codes of another VQ; they must be the same VQ")
  if generator.tokenizer.fingerprint != other.tokenizer.fingerprint:
    raise UserError(f"the {role} {other.run} and the t2i run {generator.run} use different "
                    f"caption tokenizers")
  if (other.spec.image_grid != generator.spec.image_grid
      or other.spec.image_vocab_size != generator.spec.image_vocab_size):
    raise UserError(f"the {role} expects {other.spec.image_vocab_size} codes on "
                    f"{other.spec.image_grid}, the t2i run samples "
                    f"{generator.spec.image_vocab_size} on {generator.spec.image_grid}")


SELECTIONS = ("consistent", "best", "contrastive")


def check_candidates(candidates: int) -> None:
  if int(candidates) != candidates or candidates < 1:
    raise UserError(f"--candidates must be a positive integer, got {candidates}")


def check_selection(selection: str) -> None:
  if selection not in SELECTIONS:
    raise UserError(f"--rerank must be one of {', '.join(SELECTIONS)}, got {selection!r}")


def check_arguments(scorer: str | None, candidates: int, selection: str = "consistent",
                    judge: str | None = None) -> None:
  """`--scorer` / `--candidates` / `--rerank` / `--judge` of `vlgen sample` and `vlgen eval`."""
  check_candidates(candidates)
  check_selection(selection)
  if candidates > 1 and not scorer:
    raise UserError("--candidates > 1 needs --scorer RUN (a captioner run) to pick among them")
  if judge and (selection != "contrastive" or not scorer):
    raise UserError("--judge RUN is used only by --rerank contrastive (with --scorer)")


def load_scorer(path: str | None, generator):
  """The captioner run at `path`, checked against the t2i run (None for no path)."""
  if not path:
    return None
  from vlgen_jax.sample.captioner import Captioner
  scorer = Captioner.load(path)
  check_pair(generator, scorer)
  return scorer


def load_judge(path: str | None, generator):
  """The t2i run at `path` as the contrastive rule's judge, checked against
  the sampled run (the sampled run itself for no path)."""
  if not path:
    return generator
  from vlgen_jax.sample.generator import Generator
  judge = Generator.load(path)
  check_pair(generator, judge, "judge")
  return judge


def select(scores: np.ndarray, agree: np.ndarray, selection: str,
           contrast: np.ndarray | None = None) -> np.ndarray:
  """Index of the kept candidate per row of (n, candidates) scores and
  agreements (and contrasts, for "contrastive"; module docstring)."""
  best = np.argmax(scores, axis=1)
  if selection == "best":
    return best
  if selection == "contrastive":
    if contrast is None:
      raise ValueError("the contrastive rule needs each candidate's contrast")
    # argmax takes the first of equal contrasts: seed order, as "consistent".
    first = np.argmax(np.where(agree, contrast, -np.inf), axis=1)
    return np.where(agree.any(axis=1), first, best)
  return np.where(agree.any(axis=1), np.argmax(agree, axis=1), best)


class CaptionNeighbours:
  """The captions of a pool that differ from a caption in exactly one word
  (same number of words): the alternatives the contrastive rule tests a
  candidate against. Sorted, at most `limit` per caption."""

  def __init__(self, pool: Sequence[str], limit: int = MAX_NEIGHBOURS):
    self.limit = limit
    self._index = collections.defaultdict(set)
    for caption in set(pool):
      for key in self._keys(caption):
        self._index[key].add(caption)

  @staticmethod
  def _keys(caption: str):
    words = caption.split()
    return [(len(words), i, tuple(words[:i]), tuple(words[i + 1:])) for i in range(len(words))]

  def __call__(self, caption: str) -> list[str]:
    found = set()
    for key in self._keys(caption):
      found |= self._index.get(key, set())
    found.discard(caption)
    return sorted(found)[:self.limit]


@functools.lru_cache(maxsize=4)
def _training_neighbours(data_dir: str) -> CaptionNeighbours:
  from vlgen_jax.data import token_records
  source = token_records.TokenRecordSource(data_dir, "train")
  return CaptionNeighbours([token_records.decode_token_record(source[i])[1]
                            for i in range(len(source))])


def training_neighbours(judge) -> CaptionNeighbours:
  """Neighbours among the judge's training captions (its token dataset); a
  judge trained on anything else is a UserError here, before sampling."""
  data = judge.config.data
  if data.source != "tokens" or not data.data_dir:
    raise UserError(f"--rerank contrastive needs the judge's training captions, and {judge.run} "
                    f"was not trained on a token dataset (data.source=tokens)")
  return _training_neighbours(str(data.data_dir))


def contrast(judge, tokens: np.ndarray, expanded: Sequence[str], neighbours, *,
             batch_size: int = 64) -> np.ndarray:
  """(len(expanded),) each candidate's contrast (module docstring): min over
  the prompt's neighbours and the image tokens of log p(token | prompt) -
  log p(token | neighbour) under the judge (a t2i Generator); 0 where the
  prompt has no neighbours."""
  own = judge.token_log_probs(expanded, tokens, batch_size=batch_size)
  alternatives = [neighbours(prompt) for prompt in expanded]
  rows = np.repeat(np.arange(len(expanded)), [len(a) for a in alternatives])
  flat = [a for alts in alternatives for a in alts]
  out = np.zeros(len(expanded), np.float32)
  if flat:
    other = judge.token_log_probs(flat, np.asarray(tokens)[rows], batch_size=batch_size)
    lowest = (own[rows] - other).min(axis=1)
    out[np.unique(rows)] = np.inf
    np.minimum.at(out, rows, lowest)
  return out


def generate(generator, scorer, prompts: Sequence[str], options, *, candidates: int = 1,
             seed: int = 0, batch_size: int = 16, progress: Callable[[int], None] | None = None,
             first_index: int = 0, selection: str = "consistent", judge=None):
  """(images, tokens, kept scores or None): plain sampling without a scorer,
  else one of `candidates` per prompt (`generate_reranked`). Output i
  is the same whether made alone or as output `first_index + i` of a run."""
  if scorer is None:
    images, tokens = generator.generate(prompts, options, seed=seed, batch_size=batch_size,
                                        progress=progress, first_index=first_index)
    return images, tokens, None
  images, tokens, kept, _ = generate_reranked(generator, scorer, prompts, options,
                                              candidates=candidates, seed=seed,
                                              batch_size=batch_size, progress=progress,
                                              first_index=first_index, selection=selection,
                                              judge=judge)
  return images, tokens, kept


def draw_candidates(generator, prompts: Sequence[str], options, *, candidates: int,
                    seed: int = 0, batch_size: int = 16,
                    progress: Callable[[int], None] | None = None, first_index: int = 0):
  """`candidates` samples of each prompt in one `generate` call: candidate j of
  prompt i is image i * candidates + j of the run's seed (output
  `first_index + i` of a run draws the same). Returns (uint8 images
  (n * candidates, H, W, 3), tokens (n * candidates, N), the prompt of each)."""
  check_candidates(candidates)
  expanded = [p for p in prompts for _ in range(candidates)]
  images, tokens = generator.generate(expanded, options, seed=seed, batch_size=batch_size,
                                      progress=progress, first_index=first_index * candidates)
  return images, tokens, expanded


def read_candidates(scorer, tokens, expanded: Sequence[str], candidates: int):
  """(scores, agreements), each (n, candidates), of `draw_candidates`' output."""
  scores, agree = scorer.score_and_agreement(tokens, expanded)
  shape = (len(expanded) // candidates, candidates)
  return np.asarray(scores).reshape(shape), np.asarray(agree, bool).reshape(shape)


def generate_reranked(generator, scorer, prompts: Sequence[str], options, *, candidates: int,
                      seed: int = 0, batch_size: int = 16,
                      progress: Callable[[int], None] | None = None, first_index: int = 0,
                      selection: str = "consistent", judge=None):
  """One kept image per entry of `prompts` among `candidates` samples, chosen
  by `selection` (module docstring); `judge` (a t2i Generator, default
  `generator`) computes the contrastive rule's contrasts.

  Returns (uint8 images (n, H, W, 3), tokens (n, N), scores (n,) of the kept
  ones, all scores (n, candidates)).
  """
  check_selection(selection)
  judge = generator if judge is None else judge
  neighbours = training_neighbours(judge) if selection == "contrastive" else None
  images, tokens, expanded = draw_candidates(generator, prompts, options, candidates=candidates,
                                             seed=seed, batch_size=batch_size, progress=progress,
                                             first_index=first_index)
  scores, agree = read_candidates(scorer, tokens, expanded, candidates)
  contrasts = None
  if selection == "contrastive":
    contrasts = contrast(judge, tokens, expanded, neighbours,
                         batch_size=batch_size).reshape(scores.shape)
  pick = select(scores, agree, selection, contrasts)
  rows = np.arange(len(prompts))
  keep = rows * candidates + pick
  return images[keep], tokens[keep], scores[rows, pick], scores
