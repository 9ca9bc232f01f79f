"""`vlgen sample`: captions -> PNG files, captions.tsv and a grid, from a trained run."""
from __future__ import annotations

import argparse
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
  parser.add_argument("--batch-size", type=int, default=16)
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
              plausibility=args.plausibility)


def read_prompts(args) -> list[str]:
  from vlgen_jax.sample.outputs import read_prompts_file
  return read_prompts_file(args.prompts) if args.prompts is not None else list(args.prompt)


def run(args) -> int:
  import time
  from tqdm import tqdm
  from vlgen_jax.runs import t2i_config
  from vlgen_jax.sample.generator import Generator
  from vlgen_jax.sample.outputs import write_outputs
  from vlgen_jax.sample.sampler import SamplingOptions

  if args.num_per_prompt < 1:
    raise UserError(f"--num-per-prompt must be >= 1, got {args.num_per_prompt}")
  if args.batch_size < 1:
    raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
  from vlgen_jax.sample import rerank
  rerank.check_arguments(args.scorer, args.candidates)
  prompts = read_prompts(args)
  from vlgen_jax.train import mesh as mesh_lib
  mesh_lib.maybe_initialize_distributed()  # several processes: before touching devices
  # Validated before anything is loaded.
  options = SamplingOptions.from_config(t2i_config(args.workdir), **sampling_overrides(args))
  gen = Generator.load(args.workdir, step=args.step, vq_workdir=args.vq_workdir,
                       mesh_overrides=args.mesh)
  scorer = rerank.load_scorer(args.scorer, gen)
  expanded = [p for p in prompts for _ in range(args.num_per_prompt)]
  before = gen.tokenizer.num_truncated
  gen.tokenizer.encode_batch(prompts, gen.spec.text_length)
  truncated = gen.tokenizer.num_truncated - before
  import jax
  main_process = jax.process_index() == 0
  start = time.perf_counter()
  with tqdm(total=len(expanded) * args.candidates, desc="sample", unit="img",
            disable=not main_process) as bar:
    images, _, _ = rerank.generate(gen, scorer, expanded, options, candidates=args.candidates,
                                   seed=args.seed, batch_size=args.batch_size,
                                   progress=bar.update)
  seconds = time.perf_counter() - start
  if truncated and main_process:
    print(f"warning: {truncated} prompt(s) longer than {gen.spec.text_length} text tokens were "
          f"truncated", file=sys.stderr)
  if main_process:
    grid = write_outputs(args.outdir, images, expanded, info={
        "run": os.path.abspath(gen.run), "step": gen.step,
        "evaluators": list(gen.config.evaluators)})
    kept = f" (each the best of {args.candidates} by {args.scorer})" if scorer else ""
    print(f"wrote {len(images)} images{kept} to {args.outdir} (grid: {grid}); "
          f"{len(images) / seconds:.2f} images/s, {seconds / len(images):.3f} s per kept image")
  return 0
