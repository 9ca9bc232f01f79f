"""`vlgen sample`: captions -> PNG files, captions.tsv and a grid, from a trained run."""
from __future__ import annotations

import argparse
import itertools
import os
import sys

from vlgen_jax.errors import UserError

HELP = "sample images for text prompts from a trained text-to-image run"


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--workdir", required=True,
                      help="a t2i training workdir, or a `vlgen demo` workdir")
  src = parser.add_mutually_exclusive_group(required=True)
  src.add_argument("--prompt", action="append", help="a caption (repeatable); '' = unconditional")
  src.add_argument("--prompts", help="text file, one caption per line")
  parser.add_argument("--outdir", required=True)
  add_sampling_arguments(parser)
  parser.add_argument("--num-per-prompt", type=int, default=1)
  parser.add_argument("--batch-size", type=int, default=16,
                      help="images per batch (capped by an estimate of the device memory)")
  parser.add_argument("--overwrite", action="store_true",
                      help="replace an existing --outdir (kept until the new one is complete)")
  # Fault injection for tests/reliability: SIGTERM to itself after N batches.
  parser.add_argument("--debug-sigterm-after-batches", type=int, default=0,
                      help=argparse.SUPPRESS)
  add_rerank_arguments(parser)


def add_rerank_arguments(parser: argparse.ArgumentParser) -> None:
  """Options shared with `vlgen eval`."""
  parser.add_argument("--scorer", default=None,
                      help="captioner run: sample --candidates images per output and keep the "
                           "one whose caption likelihood is highest")
  parser.add_argument("--candidates", type=int, default=1,
                      help="candidates per kept image (with --scorer)")


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
  """Options shared with `vlgen eval`."""
  parser.add_argument("--cfg-scale", type=float, default=None,
                      help="classifier-free guidance scale (default: the run's config, else 1)")
  parser.add_argument("--cfg-schedule", default=None, choices=("constant", "linear"),
                      help="default: the run's config, else constant")
  parser.add_argument("--plausibility", type=float, default=None,
                      help="only draw codes whose probability given the caption is >= this "
                           "fraction of the most likely code's (default: the run's config, else 0)")
  parser.add_argument("--steps", type=int, default=None,
                      help="parallel decoding steps (masked family; default: the run's config)")
  parser.add_argument("--mask-schedule", default=None, choices=("cosine", "linear"),
                      help="tokens left masked after each parallel step (masked family)")
  parser.add_argument("--choice-temperature", type=float, default=None,
                      help="Gumbel noise on which draws are kept, annealed to 0 (masked family)")
  parser.add_argument("--decoding", default=None, choices=("ar", "jacobi"),
                      help="ar: one token per decoder call; jacobi: speculative Jacobi decoding, "
                           "same distribution in fewer sequential calls (default: the run's "
                           "config, else ar)")
  parser.add_argument("--draft-len", type=int, default=None,
                      help="Jacobi window: draft tokens per decoder call (default: the run's "
                           "config, else 16)")
  parser.add_argument("--dtype", default=None, choices=("float32", "bfloat16"),
                      help="sampling compute dtype; bfloat16 also casts the weight matrices "
                           "(default: the run's config.dtype)")
  parser.add_argument("--quantize", default="none", choices=("none", "int8"),
                      help="int8: int8 weight-only decoder matmuls (half the weight bytes of "
                           "bfloat16)")
  parser.add_argument("--temperature", type=float, default=None)
  parser.add_argument("--top-k", type=int, default=None)
  parser.add_argument("--top-p", type=float, default=None)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  parser.add_argument("--vq-workdir", default=None, help="VQ run (default: found from the t2i run)")
  parser.add_argument("--mesh", default=None,
                      help="sampling mesh, e.g. tensor=8 for a model larger than one device "
                           "(default: data over all devices)")


def sampling_overrides(args) -> dict:
  """The sampling flags the user gave (None = the run's `config.sample`)."""
  return dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
              cfg_scale=args.cfg_scale, cfg_schedule=args.cfg_schedule,
              plausibility=args.plausibility, steps=args.steps,
              mask_schedule=args.mask_schedule, choice_temperature=args.choice_temperature,
              decoding=args.decoding, draft_len=args.draft_len)


def read_prompts(args) -> list[str]:
  from vlgen_jax.sample.outputs import read_prompts_file
  return read_prompts_file(args.prompts) if args.prompts is not None else list(args.prompt)


def _prompt_source(args):
  """(number of prompts, a function returning a fresh iterator over them):
  a --prompts file is read line by line, never held in memory."""
  if args.prompts is None:
    prompts = list(args.prompt)
    return len(prompts), lambda: iter(prompts)
  if not os.path.isfile(args.prompts):
    raise UserError(f"prompts file not found: {args.prompts}")
  count = 0
  with open(args.prompts, encoding="utf-8", errors="replace") as f:
    for n, line in enumerate(f, 1):
      if line.strip():
        count = n  # trailing blank lines are not prompts
  if not count:
    raise UserError(f"prompts file is empty: {args.prompts}")

  def lines():
    with open(args.prompts, encoding="utf-8", errors="replace") as f:
      # Plain text, one caption per line; nothing in it is interpreted.
      for line in itertools.islice(f, count):
        yield line.rstrip("\r\n")
  return count, lines


def run(args) -> int:
  """Samples into `<outdir>.partial` under the outdir's lock, writing each
  batch as it finishes; SIGTERM/SIGINT stop after the current batch (exit
  143/130) and a rerun with the same options resumes there, to the same
  images. The folder appears (or replaces the old one, --overwrite) only
  when complete. Memory holds one batch: prompts are streamed and the batch
  is capped by an estimate of what fits on the devices."""
  import contextlib
  import signal
  import time
  from tqdm import tqdm
  from vlgen_jax import locks, partial
  from vlgen_jax.runs import t2i_config
  from vlgen_jax.sample.generator import Generator
  from vlgen_jax.sample.outputs import SampleWriter
  from vlgen_jax.sample.sampler import SamplingOptions
  from vlgen_jax.train.preemption import StopSignals

  if args.num_per_prompt < 1:
    raise UserError(f"--num-per-prompt must be >= 1, got {args.num_per_prompt}")
  if args.batch_size < 1:
    raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
  from vlgen_jax.sample import rerank
  rerank.check_arguments(args.scorer, args.candidates)
  partial.check_output(args.outdir, args.overwrite, "--outdir")
  num_prompts, prompts = _prompt_source(args)
  total = num_prompts * args.num_per_prompt
  from vlgen_jax.train import mesh as mesh_lib
  mesh_lib.maybe_initialize_distributed()  # several processes: before touching devices
  # Validated before anything is loaded.
  options = SamplingOptions.from_config(t2i_config(args.workdir), **sampling_overrides(args))
  gen = Generator.load(args.workdir, step=args.step, vq_workdir=args.vq_workdir,
                       mesh_overrides=args.mesh, dtype=args.dtype, quantize=args.quantize)
  scorer = rerank.load_scorer(args.scorer, gen)
  import jax
  main_process = jax.process_index() == 0
  cap = max(1, gen.max_batch_size() // args.candidates)
  batch_size = min(args.batch_size, cap, total)
  if batch_size < min(args.batch_size, total) and main_process:
    print(f"note: --batch-size {args.batch_size} capped at {batch_size} (about "
          f"{gen.example_bytes() * batch_size / 2**30:.1f} GiB of device memory)", file=sys.stderr)
  outdir = os.path.normpath(args.outdir)
  # What must match for a rerun to resume an interrupted one.
  resume_key = {"run": os.path.abspath(gen.run), "step": gen.step,
                "prompts": os.path.abspath(args.prompts) if args.prompts else list(args.prompt),
                "num_prompts": num_prompts, "num_per_prompt": args.num_per_prompt,
                "seed": args.seed, "sampling": repr(options),
                "scorer": args.scorer and os.path.abspath(args.scorer),
                "candidates": args.candidates,
                "vq_workdir": args.vq_workdir and os.path.abspath(args.vq_workdir)}
  batches = [0]
  with locks.output_lock(outdir) if main_process else contextlib.nullcontext():
    partial.check_output(outdir, args.overwrite, "--outdir")  # again, under the lock
    writer = SampleWriter(outdir, resume_key) if main_process else None
    done = _agree_on_done(writer.done if writer else 0)
    if done and main_process:
      print(f"resuming {writer.path}: {done} of {total} images done", file=sys.stderr)
    # (prompt, first time it is sampled) for image i = done, done + 1, ...
    items = itertools.islice(
        ((p, r == 0) for p in prompts() for r in range(args.num_per_prompt)), done, None)
    truncated, resumed = 0, done
    start = time.perf_counter()
    try:
      with StopSignals() as signals, tqdm(total=total, initial=done, desc="sample", unit="img",
                                          disable=not main_process) as bar:
        while True:
          chunk = list(itertools.islice(items, batch_size))
          if not chunk:
            break
          batches[0] += 1
          if batches[0] == args.debug_sigterm_after_batches + 1 and batches[0] > 1:
            os.kill(os.getpid(), signal.SIGTERM)
          if signals.agree():
            break
          texts = [p for p, _ in chunk]
          before = gen.tokenizer.num_truncated
          gen.tokenizer.encode_batch([p for p, first in chunk if first], gen.spec.text_length)
          truncated += gen.tokenizer.num_truncated - before
          images, _, _ = rerank.generate(gen, scorer, texts, options,
                                         candidates=args.candidates, seed=args.seed,
                                         batch_size=batch_size * args.candidates,
                                         first_index=done)
          if writer:
            writer.write(images, texts)
          done += len(chunk)
          bar.update(len(chunk))
    finally:
      if writer:
        writer.close()
    seconds = time.perf_counter() - start
    if truncated and main_process:
      print(f"warning: {truncated} prompt(s) longer than {gen.spec.text_length} text tokens were "
            f"truncated", file=sys.stderr)
    if signals.requested:
      if main_process:
        print(f"stopped by {signal.Signals(signals.received).name}: {done} of {total} images in "
              f"{writer.path}; rerun the same command to resume", file=sys.stderr)
      if signals.received == signal.SIGINT:
        raise KeyboardInterrupt
      return partial.STOPPED
    if main_process:
      grid = writer.finish({"run": os.path.abspath(gen.run), "step": gen.step,
                            "evaluators": list(gen.config.evaluators)})
      mode = (f"jacobi decoding, draft {options.draft_len}" if options.decoding == "jacobi"
              else "ar decoding")
      kept = f" (each the best of {args.candidates} by {args.scorer})" if scorer else ""
      print(f"wrote {total} images{kept} to {outdir} (grid: {grid}); "
            f"{(done - resumed) / max(seconds, 1e-9):.2f} images/s ({mode}, {gen.spec.dtype}"
            f"{', int8 weights' if args.quantize == 'int8' else ''})")
  return 0


def _agree_on_done(done: int) -> int:
  """Process 0's count of images already written, on every process."""
  import jax
  if jax.process_count() == 1:
    return done
  from jax.experimental import multihost_utils
  import numpy as np
  return int(multihost_utils.broadcast_one_to_all(np.asarray(done, np.int64)))
