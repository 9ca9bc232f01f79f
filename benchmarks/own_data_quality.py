"""Own-data quality run: `vlgen demo --data` on rendered objects
(benchmarks/objects_data.py), then the held-out (object, color) pairs.

    python benchmarks/own_data_quality.py --workdir W [--data DIR] [--resolution 64]
        [--budget quick] [--vq-steps N] [--t2i-steps N] [--seed S]

Makes the dataset in DIR if it is missing (4000 / 400 / 200 images), runs
the demo with the recipe it derives (--vq-steps / --t2i-steps shorten its
schedules, e.g. on a busy machine; the table says so), encodes heldout/ with
the run's VQ and evaluates it. Prints a table (wall time per stage,
retrieval on validation and held-out captions) and one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def _override(overrides, changes):
  d = dict(o.split("=", 1) for o in overrides)
  d.update({k: str(v) for k, v in changes.items()})
  return tuple(f"{k}={v}" for k, v in d.items())


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", required=True)
  p.add_argument("--data", default=None, help="default: WORKDIR/../objects_data")
  p.add_argument("--resolution", type=int, default=64)
  p.add_argument("--budget", default="quick")
  p.add_argument("--vq-steps", type=int, default=0, help="shorten the recipe's VQ schedule")
  p.add_argument("--t2i-steps", type=int, default=0, help="shorten the recipe's t2i schedule")
  p.add_argument("--num", type=int, default=200, help="captions per evaluation")
  p.add_argument("--seed", type=int, default=0,
                 help="training seed of the VQ and t2i runs (the spread over seeds is the "
                      "number to report)")
  a = p.parse_args()
  from vlgen_jax import cli, recipe  # pylint: disable=g-import-not-at-top

  workdir = os.path.abspath(a.workdir)
  data = os.path.abspath(a.data or os.path.join(os.path.dirname(workdir), "objects_data"))
  if not os.path.isdir(os.path.join(data, "train")):
    subprocess.run([sys.executable, os.path.join(HERE, "objects_data.py"), "--out", data],
                   check=True)
  c = recipe.build(data, resolution=a.resolution, budget=a.budget)
  args = ["demo", "--workdir", workdir, "--data", data, "--resolution", str(a.resolution),
          "--budget", a.budget, f"--config.eval.num={a.num}", f"--config.seed={a.seed}"]
  vq_changes, t2i_changes = {}, {}
  if a.seed:
    vq_changes["seed"] = t2i_changes["seed"] = a.seed
  if a.vq_steps:
    vq_changes.update(total_steps=a.vq_steps, checkpoint_every=max(1, a.vq_steps // 3))
  if a.t2i_steps:
    t2i_changes.update(total_steps=a.t2i_steps, checkpoint_every=max(1, a.t2i_steps // 4))
  if vq_changes:
    args.append(f"--config.vq.overrides={_override(c.vq.overrides, vq_changes)!r}")
  if t2i_changes:
    args.append(f"--config.t2i.overrides={_override(c.t2i.overrides, t2i_changes)!r}")
  if cli.main(args):
    sys.exit(1)
  state = json.load(open(os.path.join(workdir, "demo.json")))
  if not all(s in state["stages"] for s in ("t2i", "eval")):
    sys.exit("demo unfinished; re-run to resume")
  start = time.perf_counter()
  # The run's token dataset again (the same VQ: the same tokens), now with
  # heldout/ as well, so `vlgen eval --split heldout` finds it.
  rc = cli.main(["encode", "--workdir", os.path.join(workdir, "vq"),
                 "--output", os.path.join(workdir, "tokens"), "--overwrite",
                 "--splits", "train,validation,heldout"])
  rc = rc or cli.main(["eval", "--workdir", os.path.join(workdir, "t2i"), "--split", "heldout",
                       "--num", str(a.num), "--report", os.path.join(workdir, "eval_heldout")])
  if rc:
    sys.exit(1)
  heldout_seconds = time.perf_counter() - start
  val = json.load(open(os.path.join(workdir, "eval", "results.json")))["retrieval"]
  held = json.load(open(os.path.join(workdir, "eval_heldout", "results.json")))["retrieval"]
  stages = {k: round(v["seconds"], 1) for k, v in state["stages"].items()}
  schedule = ("recipe" if not (a.vq_steps or a.t2i_steps) else
              f"shortened: vq {a.vq_steps or 'recipe'}, t2i {a.t2i_steps or 'recipe'} steps")
  print(f"\nown-data quality ({a.budget} budget, {a.resolution} px, {schedule})")
  print("| " + " | ".join(stages) + " | heldout encode+eval |")
  print("|" + "---|" * (len(stages) + 1))
  print("| " + " | ".join(f"{v:.0f} s" for v in stages.values()) + f" | {heldout_seconds:.0f} s |")
  for name, r in (("validation", val), ("held-out pairs", held)):
    print(f"retrieval {name}: top-1 {r['top1']:.3f}, top-5 {r['top5']:.3f} "
          f"(n {r['n']}, R {r['R']}, chance top-1 {1 / r['R']:.3f})")
  print(json.dumps({"budget": a.budget, "resolution": a.resolution, "schedule": schedule,
                    "seed": a.seed,
                    "recipe": c.recipe.to_dict(), "stage_seconds": stages,
                    "retrieval_validation": val, "retrieval_heldout": held}))


if __name__ == "__main__":
  main()
