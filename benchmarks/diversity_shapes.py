"""Diversity with fidelity on shapes: do the samples of one caption vary as
the data does, and do they still satisfy it?

For the first `--captions` single-object validation captions, `--samples`
images are drawn per caption (each the best of `--candidates` by the
captioner `--scorer` when given: vlgen_jax/sample/rerank.py). Reported:
- fidelity: the fraction of all drawn images that satisfy their caption;
- spread: the standard deviation of the detected object's box centre across
  the satisfied samples of one caption (pooled variance over captions, both
  axes), in pixels, and its ratio to the same statistic on real renders of
  the same captions (the data's uniform +-3 px jitter; the same estimator on
  `--samples` renders per caption, so both carry the same small-sample noise).
A sampler that draws near copies has a ratio near 0; one that draws as the
data does has a ratio near 1. Prints a table and one JSON object.

  python benchmarks/diversity_shapes.py --workdir RUN [--vq-workdir VQ] \\
      [--scorer CAPTION_RUN --candidates 8 --rerank consistent|best|contrastive] \\
      [--judge T2I_RUN] [--temperature 1.0 --top-k 0 --plausibility A]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402


def box_centres(images, objects):
  """(x, y) box centre of the detection matching `objects[i]` in image i,
  or None where the image does not satisfy its one-object caption."""
  from vlgen_jax.shapes import detector
  out = []
  for image, obj in zip(images, objects):
    found = detector.detect(image)
    if len(found) == 1 and found[0].to_object() == obj:
      x0, y0, x1, y1 = found[0].bbox
      out.append(((x0 + x1) / 2, (y0 + y1) / 2))
    else:
      out.append(None)
  return out


def pooled_spread(groups) -> tuple[float, int]:
  """sqrt of the per-axis variance (ddof 1) pooled over groups of >= 2
  centres, averaged over the two axes; and the number of groups used."""
  num, den, used = 0.0, 0, 0
  for centres in groups:
    c = np.asarray([p for p in centres if p is not None], np.float64)
    if len(c) < 2:
      continue
    num += float(((c - c.mean(axis=0)) ** 2).sum())
    den += 2 * (len(c) - 1)
    used += 1
  return (float(np.sqrt(num / den)) if den else float("nan")), used


def real_renders(obj, count: int, rng, resolution: int):
  """`count` renders of one object with the data's jitter."""
  from vlgen_jax.shapes import scenes
  side = scenes.SIZE_PX[obj.size]
  out = []
  for jx, jy in rng.integers(-scenes.JITTER_PX, scenes.JITTER_PX + 1, size=(count, 2)):
    origin = (scenes._box_origin(obj.col, side, int(jx)), scenes._box_origin(obj.row, side, int(jy)))
    out.append(scenes.render(scenes.Scene((obj,), (origin,)), resolution))
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", required=True, help="a t2i run")
  p.add_argument("--vq-workdir", default=None)
  p.add_argument("--scorer", default=None, help="a captioner run: rerank candidates")
  p.add_argument("--candidates", type=int, default=1)
  p.add_argument("--rerank", default="consistent",
                 help="selection rule: consistent | best | contrastive")
  p.add_argument("--judge", default=None,
                 help="the contrastive rule's t2i run (default: --workdir's)")
  p.add_argument("--captions", type=int, default=50)
  p.add_argument("--samples", type=int, default=8)
  p.add_argument("--temperature", type=float, default=None)
  p.add_argument("--top-k", type=int, default=None)
  p.add_argument("--cfg-scale", type=float, default=None)
  p.add_argument("--plausibility", type=float, default=None,
                 help="the sampling's plausibility floor (default: the run's config)")
  p.add_argument("--step", type=int, default=None)
  p.add_argument("--batch-size", type=int, default=64)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--json-out", default="")
  p.add_argument("--grid-out", default="")
  args = p.parse_args(argv)

  from vlgen_jax import files
  from vlgen_jax.images import make_grid, save_png
  from vlgen_jax.runs import t2i_config
  from vlgen_jax.sample import rerank
  from vlgen_jax.sample.generator import Generator
  from vlgen_jax.sample.sampler import SamplingOptions
  from vlgen_jax.shapes import scenes

  rerank.check_arguments(args.scorer, args.candidates, args.rerank, args.judge)
  options = SamplingOptions.from_config(t2i_config(args.workdir), temperature=args.temperature,
                                        top_k=args.top_k, cfg_scale=args.cfg_scale,
                                        plausibility=args.plausibility)
  gen = Generator.load(args.workdir, step=args.step, vq_workdir=args.vq_workdir)
  scorer = rerank.load_scorer(args.scorer, gen)
  judge = rerank.load_judge(args.judge, gen)
  resolution = gen.vq.resolution

  objects, i = [], 0
  while len(objects) < args.captions:
    scene = scenes.sample_scene("validation", i)
    i += 1
    if len(scene.objects) == 1:
      objects.append(scene.objects[0])
  prompts = [scenes.build_caption([o]) for o in objects for _ in range(args.samples)]
  start = time.perf_counter()
  images, _, _ = rerank.generate(gen, scorer, prompts, options, candidates=args.candidates,
                                 seed=args.seed, batch_size=args.batch_size,
                                 selection=args.rerank, judge=judge)
  seconds = time.perf_counter() - start
  flat = [o for o in objects for _ in range(args.samples)]
  centres = box_centres(images, flat)
  fidelity = float(np.mean([c is not None for c in centres]))
  groups = [centres[k * args.samples:(k + 1) * args.samples] for k in range(len(objects))]
  spread, used = pooled_spread(groups)

  rng = np.random.default_rng(args.seed)
  real = [real_renders(o, args.samples, rng, resolution) for o in objects]
  real_groups = [box_centres(r, [o] * len(r)) for r, o in zip(real, objects)]
  data_spread, _ = pooled_spread(real_groups)

  result = {"run": os.path.abspath(gen.run), "step": gen.step, "family": gen.spec.family,
            "scorer": os.path.abspath(args.scorer) if args.scorer else None,
            "candidates": args.candidates,
            "rerank": args.rerank if args.scorer else None,
            "judge": os.path.abspath(args.judge) if args.judge else None,
            "captions": len(objects), "samples": args.samples,
            "temperature": options.temperature, "top_k": options.top_k,
            "cfg_scale": options.cfg_scale, "plausibility": options.plausibility,
            "seed": args.seed, "fidelity": fidelity,
            "spread_px": spread, "data_spread_px": data_spread,
            "spread_ratio": spread / data_spread, "captions_with_spread": used,
            "seconds_per_kept_image": seconds / len(prompts)}
  print(f"{'candidates':>10s} {'T':>5s} {'top_k':>5s} {'fidelity':>8s} {'spread':>7s} "
        f"{'data':>6s} {'ratio':>6s} {'s/img':>7s}")
  print(f"{args.candidates:10d} {options.temperature:5.2f} {options.top_k:5d} {fidelity:8.3f} "
        f"{spread:7.2f} {data_spread:6.2f} {spread / data_spread:6.2f} "
        f"{seconds / len(prompts):7.3f}")
  if args.grid_out:
    shown = min(8, len(objects))
    save_png(make_grid(list(images[:shown * args.samples]), cols=args.samples), args.grid_out)
  if args.json_out:
    files.write_json(args.json_out, result)
  print(json.dumps(result))
  return 0


if __name__ == "__main__":
  from vlgen_jax.errors import UserError
  try:
    sys.exit(main())
  except UserError as e:  # a wrong run or setting: one line, like `vlgen`
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
