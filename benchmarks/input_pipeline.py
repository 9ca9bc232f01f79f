"""Throughput of the input pipeline (vlgen_jax/data/pipeline.py) on shapes.

  python benchmarks/input_pipeline.py                       # builds a small shapes in a temp dir
  python benchmarks/input_pipeline.py --data-dir D --train-size 50000 --read-threads 8
  python benchmarks/input_pipeline.py --resolution-out 32   # with resize

Measures images/s of a training iterator (global shuffle, decode PNG,
tokenize, batch, prefetch) after a warm-up, plus the cost of restoring its
state, and of the tokenizer alone.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def _report(name: str, count: int, seconds: float, unit: str = "images") -> None:
  print(f"{name:<40} {count:>7} {unit} in {seconds:7.2f}s  {count / seconds:10.0f}/s", flush=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data-dir", default="", help="shapes data_dir (default: a temp dir)")
  parser.add_argument("--resolution", type=int, default=64, help="resolution of the shapes build")
  parser.add_argument("--resolution-out", type=int, default=0, help="pipeline resolution (0: same)")
  parser.add_argument("--train-size", type=int, default=4096)
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument("--batches", type=int, default=40)
  parser.add_argument("--read-threads", type=int, default=4)
  parser.add_argument("--read-buffer", type=int, default=256)
  parser.add_argument("--prefetch", type=int, default=2)
  args = parser.parse_args()

  from vlgen_jax.data import pipeline
  from vlgen_jax.shapes import scenes, tfds_builder
  from vlgen_jax.text.tokenizer import TextTokenizer

  data_dir = args.data_dir or tempfile.mkdtemp(prefix="vlgen_bench_")
  start = time.perf_counter()
  tfds_builder.prepare_shapes(data_dir, args.resolution, args.train_size, 64, 64, progress=False)
  print(f"shapes ready in {time.perf_counter() - start:.1f}s at {data_dir}")

  captions = [scenes.sample_scene("train", i).caption for i in range(2000)]
  tok = TextTokenizer.train(captions, 256)
  start = time.perf_counter()
  tok.encode_batch(captions * 5, 32)
  _report("tokenizer encode_batch", len(captions) * 5, time.perf_counter() - start, "captions")

  cfg = pipeline.default_data_config()
  cfg.name = scenes.dataset_name(args.resolution, args.train_size, 64, 64)
  cfg.data_dir = data_dir
  cfg.resolution = args.resolution_out or args.resolution
  cfg.read_threads, cfg.read_buffer, cfg.prefetch = args.read_threads, args.read_buffer, args.prefetch
  it = pipeline.make_iterator(cfg, split="train", batch_size=args.batch_size, seed=0, train=True,
                              process_index=0, process_count=1, tokenizer=tok)
  for _ in range(3):  # warm-up: threads, buffers
    next(it)
  start = time.perf_counter()
  for _ in range(args.batches):
    next(it)
  _report(f"train iterator (batch {args.batch_size}, {cfg.resolution}px)",
          args.batches * args.batch_size, time.perf_counter() - start)

  state = json.loads(json.dumps(it.get_state()))
  it.close()
  start = time.perf_counter()
  it = pipeline.make_iterator(cfg, split="train", batch_size=args.batch_size, seed=0, train=True,
                              process_index=0, process_count=1, tokenizer=tok)
  it.set_state(state)
  next(it)
  print(f"{'restore state + first batch':<40} {time.perf_counter() - start:7.2f}s")
  it.close()


if __name__ == "__main__":
  main()
