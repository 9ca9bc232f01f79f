"""Speed of the `shapes` data path: sampling, rendering, detection, the TFDS build.

  python benchmarks/shapes_data.py                 # all stages, default sizes
  python benchmarks/shapes_data.py --train-size 5000 --skip-build

Prints one line per measurement (examples/s and µs per example). The full
build is what `launch/quickstart.sh` runs (`vlgen data shapes --resolution 64`).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _report(name: str, count: int, seconds: float) -> None:
  print(f"{name:<34} {count:>7} in {seconds:7.2f}s  {count / seconds:10.0f}/s  "
        f"{seconds / count * 1e6:8.1f} µs each", flush=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--n", type=int, default=5000, help="examples for the in-memory stages")
  parser.add_argument("--resolution", type=int, default=64, help="resolution of the build")
  parser.add_argument("--train-size", type=int, default=50_000)
  parser.add_argument("--validation-size", type=int, default=2_000)
  parser.add_argument("--heldout-size", type=int, default=2_000)
  parser.add_argument("--skip-build", action="store_true")
  args = parser.parse_args()

  from vlgen_jax.shapes import scenes
  from vlgen_jax.shapes import tfds_builder
  from vlgen_jax.shapes import detector

  start = time.perf_counter()
  scenes = [scenes.sample_scene("train", i) for i in range(args.n)]
  _report("sample_scene", args.n, time.perf_counter() - start)
  for resolution in scenes.RESOLUTIONS:
    start = time.perf_counter()
    images = [scenes.render(s, resolution) for s in scenes]
    _report(f"render {resolution}px", args.n, time.perf_counter() - start)
    start = time.perf_counter()
    for image in images[:1000]:
      tfds_builder.encode_png(image)
    _report(f"encode_png {resolution}px", min(1000, args.n), time.perf_counter() - start)
    start = time.perf_counter()
    for image in images[:1000]:
      detector.detect(image)
    _report(f"detect {resolution}px", min(1000, args.n), time.perf_counter() - start)

  if not args.skip_build:
    total = args.train_size + args.validation_size + args.heldout_size
    with tempfile.TemporaryDirectory() as data_dir:
      start = time.perf_counter()
      tfds_builder.prepare_shapes(data_dir, args.resolution, args.train_size,
                                 args.validation_size, args.heldout_size, progress=False)
      _report(f"tfds build {args.resolution}px (all splits)", total, time.perf_counter() - start)


if __name__ == "__main__":
  main()
