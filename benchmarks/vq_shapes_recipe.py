"""The VQ tokenizer recipe on `shapes`, end to end: wall time, step time and
the acceptance metrics of `configs/vq_shapes.py` (or a variant of it).

  python benchmarks/vq_shapes_recipe.py --data-dir data/shapes            # the recipe
  python benchmarks/vq_shapes_recipe.py --data-dir data/shapes \\
      --config.model.ch=192 --config.total_steps=2000                      # a variant

Runs `vlgen train` in a subprocess (building `shapes` first if needed, not
timed), then reads the run's metrics.jsonl and prints one JSON line: wall
time of `vlgen train` (process start to exit: imports, compilation, data,
training, evals, checkpoints, export), median and mean ms/step of the logged
training windows (evals excluded by the trainer), and the last evaluation's
val/psnr, val/codebook_usage and val/fidelity. Run it in the background while
you work; the box's load changes every number but the metrics.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data-dir", required=True, help="TFDS data dir with (or for) shapes")
  parser.add_argument("--workdir", default="", help="run directory (default: a new temp dir)")
  parser.add_argument("--config", default=os.path.join(REPO_ROOT, "configs", "vq_shapes.py"))
  args, overrides = parser.parse_known_args()
  bad = [o for o in overrides if not o.startswith("--config.")]
  if bad:
    parser.error(f"unrecognized arguments: {' '.join(bad)}")
  workdir = args.workdir or tempfile.mkdtemp(prefix="vq_recipe_")
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  vlgen = [sys.executable, "-m", "vlgen_jax.cli"]

  # Build the dataset outside the timed run (the recipe's time is training).
  subprocess.run(vlgen + ["data", "shapes", "--data-dir", args.data_dir], check=True, env=env,
                 stdout=subprocess.DEVNULL)
  cmd = vlgen + ["train", "--config", args.config, "--workdir", workdir,
                 f"--config.data.data_dir={args.data_dir}"] + overrides
  start = time.perf_counter()
  subprocess.run(cmd, check=True, env=env, cwd=REPO_ROOT)
  wall = time.perf_counter() - start

  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    lines = [json.loads(line) for line in f if line.strip()]
  step_ms = [1000 * l["perf/step_time_s"] for l in lines if "perf/step_time_s" in l]
  evals = [l for l in lines if "val/psnr" in l]
  last = evals[-1] if evals else {}
  result = {
      "command": " ".join(["vlgen"] + cmd[3:]),
      "wall_s": round(wall, 1),
      "steps": max((l["step"] for l in lines), default=0),
      "step_ms_median": round(statistics.median(step_ms), 1) if step_ms else None,
      "step_ms_mean": round(statistics.mean(step_ms), 1) if step_ms else None,
      "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
      **{k: last.get(k) for k in ("step", "val/psnr", "val/codebook_usage", "val/fidelity",
                                  "val/examples")},
      "evals": [{k: e.get(k) for k in ("step", "val/psnr", "val/codebook_usage", "val/fidelity")}
                for e in evals],
      "workdir": workdir,
  }
  print(json.dumps(result))


if __name__ == "__main__":
  main()
