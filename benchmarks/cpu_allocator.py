"""CPU training step time and page faults per malloc setting, in ONE run.

VLGEN_MALLOC=heap keeps XLA:CPU's step buffers mapped between steps,
VLGEN_MALLOC=arena also those larger than a thread heap (64 MiB), by one arena
for all threads (vlgen_jax/runtime.py); VLGEN_MALLOC=default (the default)
leaves glibc as it is.
This runs the same short `vlgen train` once per setting per round, alternating
(A, B, A, B, ...) so load on a shared box hits both alike, and reports each
run's median logged step time (first log left out: it holds the compile),
minor page faults, kernel (system) CPU seconds and peak RSS.

  W=workdirs/quickstart   # a finished `bash launch/quickstart.sh`
  python benchmarks/cpu_allocator.py --data-dir $W/data --tokens $W/tokens \\
      --tokenizer $W/text_tokenizer.model [--rounds 2] [--vq-steps 300] [--t2i-steps 1500]

DIR: a shapes TFDS data dir (a `vlgen demo` workdir's data/), read with
configs/vq_shapes.py; TOKENS / SP.model: that demo's tokens/ and
text_tokenizer.model, read with configs/t2i_shapes.py (the quick start's two
training recipes). Extra settings to compare: --mode NAME=ENV=VALUE[,ENV=VALUE].
Prints a markdown table and one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(argv, env, workdir):
  """One `vlgen train` in a child process -> measurements (its own rusage)."""
  log_path = workdir + ".stderr.log"
  t0 = time.perf_counter()
  with open(log_path, "w") as log:
    proc = subprocess.Popen([sys.executable, "-m", "vlgen_jax.cli", "train", *argv,
                             "--workdir", workdir], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=log)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
  wall = time.perf_counter() - t0
  if proc.returncode:
    with open(log_path) as f:
      raise SystemExit(f"error: vlgen train failed:\n{f.read()[-3000:]}")
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    times = [m["perf/step_time_s"] for m in map(json.loads, f) if "perf/step_time_s" in m]
  return {
      "step_ms": 1000 * statistics.median(times[1:] or times),
      "minor_faults": usage.ru_minflt,
      "sys_s": usage.ru_stime,
      "user_s": usage.ru_utime,
      "wall_s": wall,
      "peak_rss_mb": usage.ru_maxrss / 1024,  # Linux: KiB
  }


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--data-dir", required=True)
  p.add_argument("--data-name", default="shapes/res64_train20000_val1000_heldout1000",
                 help="the TFDS build in --data-dir (default: the quick start's)")
  p.add_argument("--tokens", required=True)
  p.add_argument("--tokenizer", required=True)
  p.add_argument("--rounds", type=int, default=2)
  p.add_argument("--vq-steps", type=int, default=300)
  p.add_argument("--t2i-steps", type=int, default=1500)
  p.add_argument("--mode", action="append", default=[],
                 help="NAME=ENV=VALUE[,ENV=VALUE]: another setting to compare")
  a = p.parse_args(argv)

  modes = {m: {"VLGEN_MALLOC": m} for m in ("default", "heap", "arena")}
  for spec in a.mode:
    name, _, assigns = spec.partition("=")
    modes[name] = dict(x.split("=", 1) for x in assigns.split(",") if x)
  common = ["--config.eval_every=0", "--config.checkpoint_every=0"]
  recipes = {
      "vq_shapes": ["--config", "configs/vq_shapes.py", f"--config.data.data_dir={a.data_dir}",
                    f"--config.data.name={a.data_name}",
                    f"--config.total_steps={a.vq_steps}",
                    f"--config.log_every={max(1, a.vq_steps // 6)}", *common],
      "t2i_shapes": ["--config", "configs/t2i_shapes.py", f"--config.data.data_dir={a.tokens}",
                     f"--config.data.tokenizer={a.tokenizer}",
                     f"--config.total_steps={a.t2i_steps}",
                     f"--config.log_every={max(1, a.t2i_steps // 6)}", *common],
  }
  results = {r: {m: [] for m in modes} for r in recipes}
  scratch = tempfile.mkdtemp(prefix="cpu_allocator-")
  try:
    for rnd in range(a.rounds):
      for recipe, args in recipes.items():
        for mode, extra in modes.items():
          workdir = os.path.join(scratch, f"{recipe}-{mode}-{rnd}")
          env = {**os.environ, "JAX_PLATFORMS": "cpu", **extra}
          r = _run(args, env, workdir)
          shutil.rmtree(workdir, ignore_errors=True)
          results[recipe][mode].append(r)
          print(f"round {rnd} {recipe} {mode}: {r['step_ms']:.1f} ms/step, "
                f"{r['minor_faults'] / 1e6:.2f}M faults, sys {r['sys_s']:.1f} s", flush=True)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)

  print("\n| recipe | malloc | ms/step (median of runs) | minor faults (M) | system CPU s | user CPU s | peak RSS MB |")
  print("|---|---|---|---|---|---|---|")
  summary = {}
  for recipe, by_mode in results.items():
    for mode, runs in by_mode.items():
      row = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
      summary.setdefault(recipe, {})[mode] = {**row, "runs": runs}
      print(f"| {recipe} | {mode} | {row['step_ms']:.1f} | {row['minor_faults'] / 1e6:.2f} | "
            f"{row['sys_s']:.1f} | {row['user_s']:.1f} | {row['peak_rss_mb']:.0f} |")
  print(json.dumps({"rounds": a.rounds, "vq_steps": a.vq_steps, "t2i_steps": a.t2i_steps,
                    "modes": modes, "results": summary}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
