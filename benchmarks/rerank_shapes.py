"""Reranking on shapes: one draw of N candidates per caption, judged by the
pixel detector, kept by each captioner given.

For the first `--num` captions of a split of the t2i run's token dataset and
each seed, N = `--candidates` images are sampled per caption
(`rerank.draw_candidates`: what `vlgen eval --scorer RUN --candidates N`
draws), and every candidate is checked by the detector. Reported per seed:
- plain: candidate 0 satisfies (plain sampling at that seed);
- any: some candidate satisfies (the ceiling of every selection rule);
- per scorer and rule (`consistent`, `best`, `contrastive`;
  vlgen_jax/sample/rerank.py):
  the kept candidate satisfies; and the agreement test's precision (of the
  candidates the captioner reads back as their caption, the fraction that
  satisfy) and recall (of those that satisfy, the fraction it reads back).
`contrastive` asks `--judge` (default: the t2i run itself). Prints a table
and one JSON object.

  python benchmarks/rerank_shapes.py --workdir T2I --scorers CAP1,CAP2 \\
      --split heldout --num 200 --candidates 8 --seeds 0,1,2 [--judge MASKED_RUN]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402


def judge(scores, agree, ok, contrast=None) -> dict:
  """Fidelity of each rule and the agreement test's precision / recall, from
  (n, C) scores, agreements and detector verdicts (and contrasts: without
  them the contrastive rule is left out)."""
  from vlgen_jax.sample import rerank
  rows = np.arange(ok.shape[0])
  rules = [r for r in rerank.SELECTIONS if contrast is not None or r != "contrastive"]
  out = {rule: float(ok[rows, rerank.select(scores, agree, rule, contrast)].mean())
         for rule in rules}
  out["agree_precision"] = float(ok[agree].mean()) if agree.any() else float("nan")
  out["agree_recall"] = float(agree[ok].mean()) if ok.any() else float("nan")
  out["agree_fraction"] = float(agree.mean())
  return out


def seed_list(text: str) -> list[int]:
  try:
    return [int(s) for s in text.split(",")]
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", required=True, help="a t2i run")
  p.add_argument("--vq-workdir", default=None)
  p.add_argument("--scorers", required=True, help="comma-separated captioner runs")
  p.add_argument("--split", default="heldout")
  p.add_argument("--num", type=int, default=200)
  p.add_argument("--candidates", type=int, default=8)
  p.add_argument("--seeds", type=seed_list, default="0,1,2", help="comma-separated ints")
  p.add_argument("--temperature", type=float, default=None)
  p.add_argument("--top-k", type=int, default=None)
  p.add_argument("--cfg-scale", type=float, default=None)
  p.add_argument("--plausibility", type=float, default=None,
                 help="the sampling's plausibility floor (default: the run's config)")
  p.add_argument("--judge", default=None,
                 help="the contrastive rule's t2i run (default: --workdir's)")
  p.add_argument("--batch-size", type=int, default=64)
  p.add_argument("--json-out", default="")
  p.add_argument("--arrays-out", default="",
                 help="an .npz of every candidate's detector verdict, score, agreement and "
                      "contrast")
  args = p.parse_args(argv)

  from tqdm import tqdm

  from vlgen_jax import files
  from vlgen_jax.eval.evaluate import split_captions
  from vlgen_jax.runs import t2i_config
  from vlgen_jax.sample import rerank
  from vlgen_jax.sample.generator import Generator
  from vlgen_jax.sample.sampler import SamplingOptions
  from vlgen_jax.shapes.captioning import satisfies

  rerank.check_candidates(args.candidates)
  if not all(args.scorers.split(",")):
    p.error(f"--scorers: an empty run name in {args.scorers!r}")
  config = t2i_config(args.workdir)
  options = SamplingOptions.from_config(config, temperature=args.temperature, top_k=args.top_k,
                                        cfg_scale=args.cfg_scale,
                                        plausibility=args.plausibility)
  gen = Generator.load(args.workdir, vq_workdir=args.vq_workdir)
  scorers = [rerank.load_scorer(path, gen) for path in args.scorers.split(",")]
  judge_gen = rerank.load_judge(args.judge, gen)
  captions = split_captions(config, args.split, args.num)
  shape = (len(captions), args.candidates)

  result = {"run": os.path.abspath(args.workdir), "step": gen.step, "split": args.split,
            "captions": len(captions), "candidates": args.candidates,
            "temperature": options.temperature, "top_k": options.top_k,
            "cfg_scale": options.cfg_scale, "plausibility": options.plausibility,
            "scorers": [os.path.abspath(s.run) for s in scorers],
            "judge": os.path.abspath(judge_gen.run), "seeds": {}}
  arrays = {}
  neighbours = rerank.training_neighbours(judge_gen)
  print(f"{'seed':>4s} {'plain':>6s} {'any':>6s}  scorer: consistent best contrastive "
        f"precision recall")
  for seed in args.seeds:
    start = time.perf_counter()
    images, tokens, expanded = rerank.draw_candidates(gen, captions, options,
                                                      candidates=args.candidates, seed=seed,
                                                      batch_size=args.batch_size)
    sample_s = time.perf_counter() - start
    ok = np.array([satisfies(im, c) for im, c in tqdm(zip(images, expanded), total=len(expanded),
                                                     desc="detector", leave=False)]).reshape(shape)
    arrays[f"ok_{seed}"] = ok
    contrast = rerank.contrast(judge_gen, tokens, expanded, neighbours,
                               batch_size=args.batch_size).reshape(shape)
    arrays[f"contrast_{seed}"] = contrast
    row = {"plain": float(ok[:, 0].mean()), "any": float(ok.any(axis=1).mean()),
           "sample_seconds": sample_s, "scorers": []}
    line = f"{seed:4d} {row['plain']:6.3f} {row['any']:6.3f}"
    for k, scorer in enumerate(scorers):
      scores, agree = rerank.read_candidates(scorer, tokens, expanded, args.candidates)
      arrays[f"score_{seed}_{k}"], arrays[f"agree_{seed}_{k}"] = scores, agree
      judged = judge(scores, agree, ok, contrast)
      row["scorers"].append(judged)
      line += (f"  {judged['consistent']:.3f} {judged['best']:.3f} "
               f"{judged.get('contrastive', float('nan')):.3f} "
               f"{judged['agree_precision']:.3f} {judged['agree_recall']:.3f}")
    result["seeds"][seed] = row
    print(line, flush=True)
  print(json.dumps(result))
  if args.json_out:
    files.write_json(args.json_out, result)
  if args.arrays_out:
    with files.atomic_path(args.arrays_out, suffix=".npz") as tmp:
      np.savez(tmp, **{k: np.asarray(v) for k, v in arrays.items()})
  return 0


if __name__ == "__main__":
  from vlgen_jax.errors import UserError
  try:
    sys.exit(main())
  except UserError as e:  # a wrong run or split: one line, like `vlgen`
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
