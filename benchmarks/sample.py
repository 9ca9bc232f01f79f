"""Sampling throughput: KV cache vs full recompute, CFG on/off, batch sizes.

Prints a table and one JSON object (last line). On an accelerator it also
reports the memory-bandwidth floor: every decode step must read the weights
and the KV cache once, so a step cannot take less than
(param bytes + cache bytes) / HBM bandwidth.

  python benchmarks/sample.py                       # small config, 256 tokens (16x16)
  python benchmarks/sample.py --config configs/parti.py:750m --grid 32 --batch-sizes 8 \
      --modes cached --cfg 3 --dtype bfloat16       # the Parti-750M goal on one GPU
"""
from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# HBM bandwidth per device (bytes/s), matched against device_kind (lower-cased).
HBM_BANDWIDTH = (
    ("h200", 4.8e12), ("h100 pcie", 2.0e12), ("h100", 3.35e12), ("a100", 2.0e12),
    ("v6 lite", 1.64e12), ("v6e", 1.64e12), ("v5 lite", 0.82e12), ("v5e", 0.82e12),
    ("v5p", 2.76e12), ("tpu v4", 1.2e12),
)

SMALL = ["--config.model.d_model=256", "--config.model.num_heads=8", "--config.model.mlp_dim=1024",
         "--config.model.encoder_layers=2", "--config.model.decoder_layers=4",
         "--config.model.image_vocab_size=512", "--config.model.text_length=16"]


def bandwidth(device) -> float | None:
  kind = str(getattr(device, "device_kind", "")).lower()
  if device.platform == "cpu":
    return None
  return next((bw for needle, bw in HBM_BANDWIDTH if needle in kind), None)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default="configs/t2i_tiny.py")
  p.add_argument("--small", action=argparse.BooleanOptionalAction, default=None,
                 help="apply the small-model overrides (default: on for t2i_tiny)")
  p.add_argument("--grid", type=int, default=16, help="image token grid side (tokens = grid^2)")
  p.add_argument("--batch-sizes", default="1,8,32", help="e.g. 1,8,64")
  p.add_argument("--modes", default="cached,full")
  p.add_argument("--cfg", default="1,3", help="guidance scales to run (1 = off)")
  p.add_argument("--plausibility", default="0",
                 help="plausibility floors to run, e.g. 0,0.3 (0 = off; sampler.keep_plausible)")
  p.add_argument("--full-max-batch", type=int, default=1,
                 help="skip full recompute above this batch (it is slow by design)")
  p.add_argument("--dtype", default="auto")
  p.add_argument("--repeats", type=int, default=1)
  p.add_argument("--json-out", default="")
  args = p.parse_args(argv)

  import jax
  import jax.numpy as jnp
  import numpy as np
  from vlgen_jax.config import load_config
  from vlgen_jax.model.spec import ModelSpec
  from vlgen_jax.model.t2i import Model
  from vlgen_jax.tasks.t2i import empty_caption_ids
  from vlgen_jax.sample import sampler
  from vlgen_jax.train import sharding
  from vlgen_jax.train.metrics import peak_flops

  small = args.small if args.small is not None else args.config.endswith("t2i_tiny.py")
  overrides = (SMALL if small else []) + [
      f"--config.model.image_grid=({args.grid},{args.grid})", f"--config.dtype={args.dtype}"]
  config = load_config(args.config, overrides)
  spec = ModelSpec.from_config(config)
  model = Model(spec)
  device = jax.devices()[0]
  text_len = spec.text_length

  abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, text_len), jnp.int32),
                            jnp.zeros((1, spec.num_image_tokens), jnp.int32))["params"]
  params = jax.jit(lambda k: sharding.unbox(model.init(
      k, jnp.zeros((1, text_len), jnp.int32),
      jnp.zeros((1, spec.num_image_tokens), jnp.int32))["params"]))(jax.random.key(0))
  param_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(sharding.unbox(abstract)))
  n_params = sum(x.size for x in jax.tree.leaves(sharding.unbox(abstract)))
  empty = empty_caption_ids(config)
  bw = bandwidth(device)
  peak = peak_flops(device)
  act_bytes = jnp.dtype(spec.compute_dtype()).itemsize

  rows = []
  print(f"device: {device.device_kind} ({device.platform}); params: {n_params/1e6:.2f}M; "
        f"tokens per image: {spec.num_image_tokens}; dtype: {spec.compute_dtype().__name__}")
  for mode in args.modes.split(","):
    for cfg, floor_a, bs in itertools.product(
        [float(c) for c in args.cfg.split(",")], [float(a) for a in args.plausibility.split(",")],
        [int(b) for b in args.batch_sizes.split(",")]):
      if mode == "full" and bs > args.full_max_batch:
        continue
      opts = sampler.SamplingOptions(temperature=1.0, top_k=100, cfg_scale=cfg,
                                     plausibility=floor_a)  # make_sampler validates
      fn = sampler.make_sampler(model, opts, empty_caption=empty, cached=(mode == "cached"))
      text = jnp.asarray(np.random.default_rng(0).integers(4, spec.text_vocab_size, (bs, text_len)),
                         jnp.int32)
      keys = sampler.image_keys(0, 0, bs)
      t0 = time.perf_counter()
      fn(params, text, keys).block_until_ready()
      compile_s = time.perf_counter() - t0
      times = []
      for r in range(args.repeats):
        keys = sampler.image_keys(r + 1, 0, bs)
        t0 = time.perf_counter()
        fn(params, text, keys).block_until_ready()
        times.append(time.perf_counter() - t0)
      t = min(times)
      row = {"mode": mode, "cfg_scale": cfg, "plausibility": floor_a, "batch": bs, "seconds": t,
             "first_call_s": compile_s, "images_per_s": bs / t,
             "tokens_per_s": bs * spec.num_image_tokens / t}
      # Model FLOPs of cached decoding: 2 x params per token and row (x2 rows
      # with CFG); MFU is n/a on CPU (no peak in the table).
      rows_per_image = 2 if cfg != 1.0 else 1
      flops = 2.0 * n_params * rows_per_image * bs * spec.num_image_tokens
      row["mfu"] = flops / t / peak if (peak and mode == "cached") else None
      if bw and mode == "cached":
        rows_in_batch = bs * (2 if cfg != 1.0 else 1)
        cache_bytes = (2 * spec.decoder_layers * rows_in_batch * spec.num_image_tokens *
                       spec.num_heads * spec.head_dim * act_bytes +
                       2 * spec.decoder_layers * rows_in_batch * text_len * spec.num_heads *
                       spec.head_dim * act_bytes)
        floor = spec.num_image_tokens * (param_bytes + cache_bytes) / bw
        row.update(floor_s=floor, ratio_to_floor=t / floor)
      rows.append(row)
      print(f"{mode:>6}  cfg={cfg:<4g} a={floor_a:<4g} batch={bs:<3d} {t*1e3:10.1f} ms  "
            f"{row['tokens_per_s']:10.0f} tok/s  {row['images_per_s']:8.2f} img/s  "
            f"MFU {'n/a' if row['mfu'] is None else format(row['mfu'], '.1%')}"
            + (f"  {row['ratio_to_floor']:.2f}x floor" if "ratio_to_floor" in row else ""),
            flush=True)

  speedups = {}
  for r in rows:
    if r["mode"] == "full":
      c = next((x for x in rows if x["mode"] == "cached" and x["batch"] == r["batch"]
                and x["cfg_scale"] == r["cfg_scale"]
                and x["plausibility"] == r["plausibility"]), None)
      if c:
        key = f"batch{r['batch']}_cfg{r['cfg_scale']:g}_a{r['plausibility']:g}"
        speedups[key] = r["seconds"] / c["seconds"]
  print("\n| mode | cfg | plausibility | batch | ms | tokens/s | images/s | MFU |\n"
        "|---|---|---|---|---|---|---|---|")
  for r in rows:
    mfu = "n/a" if r["mfu"] is None else f"{r['mfu']:.1%}"
    print(f"| {r['mode']} | {r['cfg_scale']:g} | {r['plausibility']:g} | {r['batch']} | "
          f"{r['seconds']*1e3:.1f} | "
          f"{r['tokens_per_s']:.0f} | {r['images_per_s']:.2f} | {mfu} |")
  for k, v in speedups.items():
    print(f"cache speedup {k}: {v:.1f}x")
  result = {"benchmark": "sample", "device": device.device_kind, "platform": device.platform,
            "config": args.config, "params": n_params, "tokens_per_image": spec.num_image_tokens,
            "rows": rows, "cache_speedup": speedups}
  line = json.dumps(result)
  if args.json_out:
    with open(args.json_out, "w") as f:
      f.write(line + "\n")
  print(line)
  return 0


if __name__ == "__main__":
  sys.exit(main())
