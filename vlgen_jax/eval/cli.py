"""`vlgen eval`: evaluate a trained text-to-image run (or a folder of images).

  vlgen eval --workdir W [--split validation] [--num N] [--prompts FILE] [sampling options]
      samples the first N captions of the run's own token dataset split (or
      the lines of FILE), scores the images with the run's evaluators
      (`config.evaluators`, or --evaluators), prints one JSON line and writes
      a report folder (grid with captions, framed green when satisfied and
      red when not; per-image scores; results.json).
  vlgen eval --images DIR
      scores an existing folder with captions.tsv (e.g. from `vlgen sample`).
"""
from __future__ import annotations

import argparse
import json

from vlgen_jax.errors import UserError
from vlgen_jax.sample.cli import add_rerank_arguments, add_sampling_arguments, sampling_overrides

HELP = "evaluate a trained text-to-image run (or a folder of captioned images)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
  src = parser.add_mutually_exclusive_group(required=True)
  src.add_argument("--workdir", help="a t2i training workdir, or a `vlgen demo` workdir")
  src.add_argument("--images", help="folder with captions.tsv and the PNGs it names")
  parser.add_argument("--split", default="validation",
                      help="split of the run's token dataset whose captions are sampled")
  parser.add_argument("--prompts", default=None,
                      help="text file, one caption per line, instead of the split's captions")
  parser.add_argument("--num", type=int, default=200, help="captions to sample and score")
  parser.add_argument("--evaluators", default=None,
                      help="comma-separated evaluator names (default: the run's "
                           "config.evaluators; for --images, those of the run that sampled them)")
  parser.add_argument("--report", default=None,
                      help="report folder (default: WORKDIR/eval/<split>-<num>-step<S>-seed<N>-"
                           "<sampling>-<hash>, one per checkpoint, seed, sampling and rule; "
                           "or IMAGES/eval)")
  parser.add_argument("--batch-size", type=int, default=32)
  add_sampling_arguments(parser)
  add_rerank_arguments(parser)
  parser.add_argument("--r-precision", type=int, default=100,
                      help="with --scorer: R-precision among R captions (0 = off)")
  parser.add_argument("--fd-features", default="none", choices=("none", "captioner", "inception"),
                      help="Fréchet distance and KID against the split's real images, through "
                           "the --scorer captioner's image encoder or Inception-v3 pool3")
  parser.add_argument("--inception-weights", default=None,
                      help="Inception-v3 weights (.npz/.safetensors; docs/captioning.md)")


def _names(text: str | None):
  return None if text is None else [n.strip() for n in text.split(",") if n.strip()]


def run(args) -> int:
  from vlgen_jax.eval import evaluate
  if args.num < 1:
    raise UserError(f"--num must be >= 1, got {args.num}")
  if args.batch_size < 1:
    raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
  if args.images:
    results = evaluate.evaluate_folder(args.images, report=args.report,
                                       evaluator_names=_names(args.evaluators))
  else:
    results = evaluate.evaluate_run(
        args.workdir, split=args.split, num=args.num, prompts_file=args.prompts,
        report=args.report, evaluator_names=_names(args.evaluators),
        sampling_overrides=sampling_overrides(args), seed=args.seed, batch_size=args.batch_size, step=args.step,
        vq_workdir=args.vq_workdir, mesh=args.mesh, dtype=args.dtype,
        quantize=args.quantize, scorer=args.scorer, candidates=args.candidates,
        selection=args.rerank, judge=args.judge,
        r_precision=args.r_precision, fd_features=args.fd_features,
        inception_weights=args.inception_weights)
  if results is not None:
    print(json.dumps(results))
  return 0
