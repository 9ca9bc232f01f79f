"""Peak memory of `vlgen sample` against the number of images: with prompts
streamed and images written batch by batch, it should not grow with N.

Runs `vlgen sample` as a subprocess for each N (one prompt file with N lines)
and reads the child's peak RSS from `wait4`. Prints a table and one JSON
object (last line).

  python benchmarks/sample_memory.py --workdir DEMO_OR_T2I_RUN [--counts 1000,10000]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure(workdir: str, n: int, batch_size: int, scratch: str) -> dict:
  prompts = os.path.join(scratch, f"prompts-{n}.txt")
  with open(prompts, "w", encoding="utf-8") as f:
    for i in range(n):  # distinct prompts, so nothing is shared between lines
      f.write(f"a {['small', 'large'][i % 2]} {['red', 'blue', 'green'][i % 3]} circle {i}\n")
  outdir = os.path.join(scratch, f"samples-{n}")
  env = {**os.environ, "PYTHONPATH": REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
  start = time.perf_counter()
  proc = subprocess.Popen(
      [sys.executable, "-m", "vlgen_jax.cli", "sample", "--workdir", workdir, "--prompts",
       prompts, "--outdir", outdir, "--batch-size", str(batch_size)],
      env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  _, status, usage = os.wait4(proc.pid, 0)
  seconds = time.perf_counter() - start
  err = proc.stderr.read().decode(errors="replace")
  if status != 0:
    raise SystemExit(f"vlgen sample failed for n={n}:\n{err[-3000:]}")
  written = sum(1 for name in os.listdir(outdir) if name.endswith(".png")) - 1  # minus grid
  shutil.rmtree(outdir)
  return {"images": n, "written": written, "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
          "seconds": round(seconds, 1)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True, help="a t2i run or a `vlgen demo` workdir")
  parser.add_argument("--counts", default="1000,10000")
  parser.add_argument("--batch-size", type=int, default=256)
  args = parser.parse_args()
  rows = []
  with tempfile.TemporaryDirectory(prefix="sample_memory_") as scratch:
    for n in [int(c) for c in args.counts.split(",")]:
      rows.append(measure(args.workdir, n, args.batch_size, scratch))
      print(f"{rows[-1]['images']:>8} images  peak RSS {rows[-1]['peak_rss_mb']:>8.1f} MB  "
            f"{rows[-1]['seconds']:>7.1f} s", flush=True)
  print(json.dumps({"batch_size": args.batch_size, "rows": rows}))


if __name__ == "__main__":
  main()
