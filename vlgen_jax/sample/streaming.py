"""Sampling a folder of images: prompts streamed in, batches written as they
finish, resumable after an interrupt (what `vlgen sample` runs).

The folder is built in `<outdir>.partial` under the outdir's lock
(vlgen_jax/partial.py, vlgen_jax/locks.py) and appears, or replaces the
old one, only when complete. SIGTERM/SIGINT stop after the current batch
and a rerun with the same options resumes there, to the same images: image
i always uses key i of the seed (the Generator's batch invariance). Memory
holds one batch: prompts are read line by line and the batch is capped by
an estimate of what fits on the devices.
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import signal
import sys
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from vlgen_jax import locks, partial
from vlgen_jax.errors import UserError
from vlgen_jax.sample import rerank
from vlgen_jax.sample.outputs import SampleWriter
from vlgen_jax.train.preemption import StopSignals


@dataclasses.dataclass(frozen=True)
class PromptSource:
  """`count` prompts; `open()` returns a fresh iterator over them."""
  count: int
  open: Callable[[], Iterator[str]]
  origin: Any  # what identifies them for resuming: a file's path or the list


def prompt_source(prompts_file: str | None, prompts: Sequence[str] | None) -> PromptSource:
  """Prompts given on the command line, or a text file with one caption per
  line, read line by line (never held in memory; nothing in it is
  interpreted). Trailing blank lines are not prompts."""
  if prompts_file is None:
    listed = list(prompts or ())
    return PromptSource(len(listed), lambda: iter(listed), listed)
  if not os.path.isfile(prompts_file):
    raise UserError(f"prompts file not found: {prompts_file}")
  count = 0
  with open(prompts_file, encoding="utf-8", errors="replace") as f:
    for n, line in enumerate(f, 1):
      if line.strip():
        count = n
  if not count:
    raise UserError(f"prompts file is empty: {prompts_file}")

  def lines():
    with open(prompts_file, encoding="utf-8", errors="replace") as f:
      for line in itertools.islice(f, count):
        yield line.rstrip("\r\n")
  return PromptSource(count, lines, os.path.abspath(prompts_file))


@dataclasses.dataclass
class SampleResult:
  total: int        # images asked for
  done: int         # images in the folder (== total unless stopped)
  resumed: int      # images that were already there when this call began
  seconds: float    # wall time of this call's sampling
  truncated: int    # prompts longer than the model's text length
  stopped_by: int | None  # the signal that stopped it, or None
  path: str         # the published folder, or the partial one when stopped
  grid: str | None  # grid.png of the published folder


def sample_to_folder(gen, source: PromptSource, outdir: str, options, *,
                     num_per_prompt: int = 1, batch_size: int = 16, seed: int = 0,
                     overwrite: bool = False, scorer=None, candidates: int = 1,
                     selection: str = "consistent", judge=None,
                     resume_options: Mapping[str, Any] | None = None,
                     info: Mapping[str, Any] | None = None,
                     sigterm_after_batches: int = 0) -> SampleResult:
  """Samples `num_per_prompt` images for every prompt of `source` into
  `outdir` (numbered PNGs, captions.tsv, grid.png, sample.json with `info`).
  `resume_options`: what else must match for a rerun to resume (e.g. the
  VQ override); the run, step, prompts, seed, sampling options and scorer
  always must. With `scorer`, each image is one of `candidates` kept by
  `selection` (vlgen_jax/sample/rerank.py; `judge`: its contrastive judge).
  `sigterm_after_batches` is fault injection for tests/reliability."""
  main_process = jax.process_index() == 0
  total = source.count * num_per_prompt
  outdir = os.path.normpath(outdir)
  resume_key = {"run": os.path.abspath(gen.run), "step": gen.step, "prompts": source.origin,
                "num_prompts": source.count, "num_per_prompt": num_per_prompt, "seed": seed,
                "sampling": repr(options), "scorer": scorer and os.path.abspath(scorer.run),
                "candidates": candidates, "selection": selection if scorer else None,
                **dict(resume_options or {})}
  batches = 0
  with locks.output_lock(outdir) if main_process else contextlib.nullcontext():
    partial.check_output(outdir, overwrite, "--outdir")  # again, under the lock
    writer = SampleWriter(outdir, resume_key) if main_process else None
    done = _agree_on_done(writer.done if writer else 0)
    if done and main_process:
      print(f"resuming {writer.path}: {done} of {total} images done", file=sys.stderr)
    # (prompt, first time it is sampled) for image i = done, done + 1, ...
    items = itertools.islice(
        ((p, r == 0) for p in source.open() for r in range(num_per_prompt)), done, None)
    truncated, resumed = 0, done
    start = time.perf_counter()
    try:
      with StopSignals() as signals, tqdm(total=total, initial=done, desc="sample", unit="img",
                                          disable=not main_process) as bar:
        while True:
          chunk = list(itertools.islice(items, batch_size))
          if not chunk:
            break
          batches += 1
          if batches == sigterm_after_batches + 1 and batches > 1:
            os.kill(os.getpid(), signal.SIGTERM)
          if signals.agree():
            break
          texts = [p for p, _ in chunk]
          before = gen.tokenizer.num_truncated
          gen.tokenizer.encode_batch([p for p, first in chunk if first], gen.spec.text_length)
          truncated += gen.tokenizer.num_truncated - before
          images, _, _ = rerank.generate(gen, scorer, texts, options, candidates=candidates,
                                         seed=seed, batch_size=batch_size * candidates,
                                         first_index=done, selection=selection,
                                         judge=judge)
          if writer:
            writer.write(images, texts)
          done += len(chunk)
          bar.update(len(chunk))
    finally:
      if writer:
        writer.close()
    seconds = time.perf_counter() - start
    grid, path = None, writer.path if writer else outdir
    if not signals.requested and writer:
      grid = writer.finish(dict(info or {}))
      path = outdir
  return SampleResult(total=total, done=done, resumed=resumed, seconds=seconds,
                      truncated=truncated, stopped_by=signals.received if signals.requested
                      else None, path=path, grid=grid)


def _agree_on_done(done: int) -> int:
  """Process 0's count of images already written, on every process."""
  if jax.process_count() == 1:
    return done
  return int(multihost_utils.broadcast_one_to_all(np.asarray(done, np.int64)))
