"""`vlgen sample`: captions -> PNG files, captions.tsv and a grid, from a trained run.

Parses and calls vlgen_jax/sample/streaming.py (library imports are inside
`run` so that `vlgen --help` does not import jax; see vlgen_jax/cli.py)."""
from __future__ import annotations

import argparse
import os
import signal
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
                      help="captioner run: sample --candidates images per output and keep one "
                           "the captioner reads as the prompt")
  parser.add_argument("--candidates", type=int, default=1,
                      help="candidates per kept image (with --scorer)")
  parser.add_argument("--rerank", default="consistent",
                      help="which candidate is kept: consistent = the first whose greedy caption "
                           "is the prompt, else the best scored (keeps the samples varied); "
                           "best = the highest caption likelihood (Parti); contrastive = "
                           "among those read as the prompt, the one whose worst image token the "
                           "judge (--judge; default the t2i run) still finds likelier under the "
                           "prompt than under any training caption one word away, by the "
                           "widest margin")
  parser.add_argument("--judge", default=None,
                      help="with --rerank contrastive: the t2i run (any family, same VQ and "
                           "caption tokenizer) whose token likelihoods compare the captions "
                           "(default: the sampled run; a masked run sees each token's whole "
                           "surround)")


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
  parser.add_argument("--unroll", type=int, default=None,
                      help="AR: tokens per decode-loop iteration (longer compile, same tokens; "
                           "docs/sampling.md has its measured effect)")
  parser.add_argument("--cache-chunks", type=int, default=None,
                      help="AR: decode in this many chunks of positions, each step attending "
                           "only to the cache's filled chunks instead of masking all of it "
                           "(default 1; same tokens; docs/sampling.md has its measured effect)")
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
              decoding=args.decoding, draft_len=args.draft_len, unroll=args.unroll,
              cache_chunks=args.cache_chunks)


def run(args) -> int:
  from vlgen_jax import partial
  from vlgen_jax.runs import t2i_config
  from vlgen_jax.sample import rerank, streaming
  from vlgen_jax.sample.generator import Generator
  from vlgen_jax.sample.sampler import SamplingOptions
  from vlgen_jax.train import mesh as mesh_lib

  if args.num_per_prompt < 1:
    raise UserError(f"--num-per-prompt must be >= 1, got {args.num_per_prompt}")
  if args.batch_size < 1:
    raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
  rerank.check_arguments(args.scorer, args.candidates, args.rerank, args.judge)
  partial.check_output(args.outdir, args.overwrite, "--outdir")
  source = streaming.prompt_source(args.prompts, args.prompt)
  total = source.count * args.num_per_prompt
  mesh_lib.maybe_initialize_distributed()  # several processes: before touching devices
  # Validated before anything is loaded.
  options = SamplingOptions.from_config(t2i_config(args.workdir), **sampling_overrides(args))
  gen = Generator.load(args.workdir, step=args.step, vq_workdir=args.vq_workdir,
                       mesh_overrides=args.mesh, dtype=args.dtype, quantize=args.quantize)
  scorer = rerank.load_scorer(args.scorer, gen)
  judge = rerank.load_judge(args.judge, gen)
  import jax
  main_process = jax.process_index() == 0
  cap = max(1, gen.max_batch_size() // args.candidates)
  batch_size = min(args.batch_size, cap, total)
  if batch_size < min(args.batch_size, total) and main_process:
    print(f"note: --batch-size {args.batch_size} capped at {batch_size} (about "
          f"{gen.example_bytes() * batch_size / 2**30:.1f} GiB of device memory)", file=sys.stderr)
  result = streaming.sample_to_folder(
      gen, source, args.outdir, options, num_per_prompt=args.num_per_prompt,
      batch_size=batch_size, seed=args.seed, overwrite=args.overwrite, scorer=scorer,
      candidates=args.candidates, selection=args.rerank, judge=judge,
      # A judge only when given: partial outputs written before --judge existed resume.
      resume_options={"vq_workdir": args.vq_workdir and os.path.abspath(args.vq_workdir),
                      **({"judge": os.path.abspath(args.judge)} if args.judge else {})},
      info={"run": os.path.abspath(gen.run), "step": gen.step,
            "evaluators": list(gen.config.evaluators)},
      sigterm_after_batches=args.debug_sigterm_after_batches)
  if result.truncated and main_process:
    print(f"warning: {result.truncated} prompt(s) longer than {gen.spec.text_length} text "
          f"tokens were truncated", file=sys.stderr)
  if result.stopped_by is not None:
    if main_process:
      print(f"stopped by {signal.Signals(result.stopped_by).name}: {result.done} of "
            f"{result.total} images in {result.path}; rerun the same command to resume",
            file=sys.stderr)
    if result.stopped_by == signal.SIGINT:
      raise KeyboardInterrupt
    return partial.STOPPED
  if main_process:
    mode = (f"jacobi decoding, draft {options.draft_len}" if options.decoding == "jacobi"
            else "ar decoding" + (f", {options.cache_chunks} cache chunks"
                                  if options.cache_chunks > 1 else ""))
    kept = (f" (each one of {args.candidates} kept by {args.scorer}, {args.rerank}"
            f"{', judged by ' + args.judge if args.judge else ''})"
            if scorer else "")
    rate = (result.done - result.resumed) / max(result.seconds, 1e-9)
    print(f"wrote {result.total} images{kept} to {result.path} (grid: {result.grid}); "
          f"{rate:.2f} images/s ({mode}, {gen.spec.dtype}"
          f"{', int8 weights' if args.quantize == 'int8' else ''})")
  return 0
