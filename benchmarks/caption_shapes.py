"""How well a captioner run reads shapes renders: caption fidelity (the
detector checks the generated caption against the real image), exact match
and R-precision (R = 100 by default), per split. Prints a table and one JSON
object. Library: vlgen_jax/shapes/captioning.py; docs/captioning.md.

  python benchmarks/caption_shapes.py --workdir CAPTION_RUN --num 1000 \\
      [--splits validation,heldout] [--pmi-weight 3 --plausibility 0.01] [--mask-previous]
      [--step S]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", required=True, help="a captioner run")
  p.add_argument("--step", type=int, default=None)
  p.add_argument("--num", type=int, default=1000)
  p.add_argument("--splits", default="validation,heldout")
  p.add_argument("--beam-size", type=int, default=1)
  p.add_argument("--pmi-weight", type=float, default=0.0)
  p.add_argument("--plausibility", type=float, default=0.0)
  p.add_argument("--mask-previous", action="store_true",
                 help="read each piece with the one before it hidden")
  p.add_argument("--R", type=int, default=100, help="R-precision's R (0: off)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--json-out", default="")
  args = p.parse_args(argv)

  from vlgen_jax import files
  from vlgen_jax.sample.captioner import Captioner
  from vlgen_jax.shapes.captioning import shapes_caption_eval

  captioner = Captioner.load(args.workdir, step=args.step)
  rows = []
  for split in args.splits.split(","):
    start = time.perf_counter()
    row, _ = shapes_caption_eval(captioner, split, args.num, beam_size=args.beam_size,
                                 R=args.R, seed=args.seed, pmi_weight=args.pmi_weight,
                                 plausibility=args.plausibility,
                                 mask_previous=args.mask_previous)
    row["seconds"] = time.perf_counter() - start
    rows.append(row)
  print(f"{'split':12s} {'n':>5s} {'fidelity':>8s} {'exact':>6s} {'R@1':>6s} {'R@5':>6s} {'s':>6s}")
  for r in rows:
    print(f"{r['split']:12s} {r['n']:5d} {r['caption_fidelity']:8.3f} {r['exact_match']:6.3f} "
          f"{r.get('r_precision_top1', float('nan')):6.3f} "
          f"{r.get('r_precision_top5', float('nan')):6.3f} {r['seconds']:6.1f}")
  result = {"run": os.path.abspath(args.workdir), "step": args.step, "results": rows}
  if args.json_out:
    files.write_json(args.json_out, result)
  print(json.dumps(result))
  return 0


if __name__ == "__main__":
  sys.exit(main())
