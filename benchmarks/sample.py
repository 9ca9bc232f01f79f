"""Sampling speed: per-step time vs batch, guidance cost, AR vs Jacobi, and a
plain PyTorch reference.

For each batch size every variant is compiled first, then the variants are
timed alternately (`--repeats` rounds, the minimum is kept), so ratios within
one run share the box's load. Variants: the JAX sampler (KV cache, or full
recompute with `--modes full` at small batches) for each guidance scale and
decoding ("ar", "jacobi" with `--draft-len`), and, when `import torch` works,
`torch_decoder.TorchSampler` (eager PyTorch, Python loop over tokens, in-place
KV cache; what users of LlamaGen-style code run) with the same shapes.
Reported per row: wall time per batch, sequential decoder calls per image
(N for AR; the batch's while-loop iterations for Jacobi), ms per call, µs
per token, tokens/s, images/s; on an accelerator also the HBM floor (every
call reads the weights and the caches once: (param bytes + cache bytes) /
bandwidth per call). Prints a table and one JSON line.

  python benchmarks/sample.py                         # small model, 64 tokens
  python benchmarks/sample.py --config configs/parti.py:750m --no-small \\
      --config.model.image_grid='(32,32)' --batch-sizes 8 --cfg 3 \\
      --config.dtype=bfloat16 --torch no            # the Parti-750M goal on one GPU
"""
from __future__ import annotations

import argparse
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

# The shapes issue 18 measured against PyTorch: d 256, 4 heads, 4 + 4 layers,
# MLP 1024, 512 codes, 8x8 = 64 image tokens.
SMALL = ["--config.model.d_model=256", "--config.model.num_heads=4", "--config.model.mlp_dim=1024",
         "--config.model.encoder_layers=4", "--config.model.decoder_layers=4",
         "--config.model.image_vocab_size=512", "--config.model.text_length=16",
         "--config.model.image_grid=(8,8)"]


def bandwidth(device) -> float | None:
  kind = str(getattr(device, "device_kind", "")).lower()
  if device.platform == "cpu":
    return None
  return next((bw for needle, bw in HBM_BANDWIDTH if needle in kind), None)


def parse(argv):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default="configs/t2i_tiny.py")
  p.add_argument("--small", action=argparse.BooleanOptionalAction, default=None,
                 help="apply the small-model overrides (default: on for t2i_tiny); "
                      "--config.X=Y overrides apply after them")
  p.add_argument("--batch-sizes", default="1,8,32,64")
  p.add_argument("--modes", default="cached", help="cached,full")
  p.add_argument("--decoding", default="ar,jacobi")
  p.add_argument("--draft-len", type=int, default=16)
  p.add_argument("--unroll", default="1", help="AR decode-loop unrolls to compare, e.g. 1,8")
  p.add_argument("--cache-chunks", default="1",
                 help="AR cache chunk counts to compare, e.g. 1,4 (1 = one buffer, masked in "
                      "full at every step; `SamplingOptions.cache_chunks`)")
  p.add_argument("--decode-layers", default="split",
                 help="split,stacked: also time decode loops that slice the stacked decoder "
                      "layers inside the loop (what `Model.decode_params` avoids)")
  p.add_argument("--cfg", default="1,3", help="guidance scales to run (1 = off)")
  p.add_argument("--plausibility", default="0", help="plausibility floors, e.g. 0,0.3")
  p.add_argument("--top-k", type=int, default=100)
  p.add_argument("--full-max-batch", type=int, default=1,
                 help="skip full recompute above this batch (it is slow by design)")
  p.add_argument("--torch", choices=("auto", "yes", "no"), default="auto",
                 help="PyTorch reference rows (auto: when torch imports)")
  p.add_argument("--torch-threads", type=int, default=1,
                 help="torch.set_num_threads for the reference (0 = torch's default). On a "
                      "shared 2-core box torch's OpenMP threads spin-wait: 2 threads ran the "
                      "batch-8 reference 17-30x slower than 1, so 1 is its fair setting there")
  p.add_argument("--host-devices", type=int, default=0,
                 help="CPU: run the JAX sampler data-parallel over N host devices "
                      "(--xla_force_host_platform_device_count=N, e.g. one per core); each "
                      "batch is split over them (vlgen sample does this with the same flag)")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--json-out", default="")
  rest = list(sys.argv[1:] if argv is None else argv)
  args, unknown = p.parse_known_args([a for a in rest if not a.startswith("--config.")])
  if unknown:
    p.error(f"unrecognized arguments: {' '.join(unknown)}")
  args.config_overrides = [a for a in rest if a.startswith("--config.")]
  return args


def main(argv=None) -> int:
  args = parse(argv)
  if args.host_devices > 1:  # must be set before jax initialises its CPU backend
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={args.host_devices}")
  import jax
  import jax.numpy as jnp
  import numpy as np
  from vlgen_jax import files
  from vlgen_jax.config import load_config
  from vlgen_jax.model.spec import ModelSpec
  from vlgen_jax.model.t2i import Model
  from vlgen_jax.sample import sampler
  from vlgen_jax.tasks.t2i import empty_caption_ids
  from vlgen_jax.train import sharding
  from vlgen_jax.train.metrics import peak_flops

  torch_sampler = None
  if args.torch != "no":
    try:
      import torch
      from benchmarks.torch_decoder import TorchSampler
    except ImportError:
      if args.torch == "yes":
        raise
    else:
      torch_sampler = TorchSampler

  small = args.small if args.small is not None else args.config.endswith("t2i_tiny.py")
  config = load_config(args.config, (SMALL if small else []) + args.config_overrides)
  spec = ModelSpec.from_config(config)
  model = Model(spec)
  device = jax.devices()[0]
  n_tok = spec.num_image_tokens
  text_len = spec.text_length

  dummy = (jnp.zeros((1, text_len), jnp.int32), jnp.zeros((1, n_tok), jnp.int32))
  abstract = sharding.unbox(jax.eval_shape(model.init, jax.random.key(0), *dummy)["params"])
  params = jax.jit(lambda k: sharding.unbox(model.init(k, *dummy)["params"]))(jax.random.key(0))
  # Data parallel over every device (one unless --host-devices): params
  # replicated, a batch split over "data" when it divides evenly.
  data_mesh = jax.make_mesh((len(jax.devices()),), ("data",),
                            axis_types=(jax.sharding.AxisType.Auto,))
  replicated = jax.sharding.NamedSharding(data_mesh, jax.sharding.PartitionSpec())
  params = jax.device_put(params, replicated)

  def place(x):
    split = x.shape[0] % len(jax.devices()) == 0
    return jax.device_put(x, jax.sharding.NamedSharding(
        data_mesh, jax.sharding.PartitionSpec("data") if split else jax.sharding.PartitionSpec()))
  param_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract))
  n_params = sum(x.size for x in jax.tree.leaves(abstract))
  empty = empty_caption_ids(config)
  bw = bandwidth(device)
  peak = peak_flops(device)
  act_bytes = jnp.dtype(spec.compute_dtype()).itemsize
  ref = torch_sampler(spec) if torch_sampler else None
  if ref is not None and args.torch_threads:
    torch.set_num_threads(args.torch_threads)

  print(f"device: {device.device_kind} ({device.platform}) x {len(jax.devices())}; "
        f"params: {n_params/1e6:.2f}M; "
        f"tokens per image: {n_tok}; dtype: {spec.compute_dtype().__name__}; "
        f"torch: {torch.__version__ + ' (' + str(torch.get_num_threads()) + ' threads)' if ref else 'no'}",
        flush=True)
  rows = []
  cfgs = [float(c) for c in args.cfg.split(",")]
  floors = [float(a) for a in args.plausibility.split(",")]
  unrolls = [int(u) for u in args.unroll.split(",")]
  chunk_counts = [int(c) for c in args.cache_chunks.split(",")]
  layouts = args.decode_layers.split(",")

  class StackedDecodeModel(Model):
    decode_params = None  # decode loops then pass the stacked params to every step
  for bs in [int(b) for b in args.batch_sizes.split(",")]:
    text_np = np.random.default_rng(0).integers(4, spec.text_vocab_size, (bs, text_len))
    text = place(jnp.asarray(text_np, jnp.int32))
    variants = []
    for mode, decoding, cfg, floor, unroll, chunks, layout in itertools.product(
        args.modes.split(","), args.decoding.split(","), cfgs, floors, unrolls, chunk_counts,
        layouts):
      if layout != "split" and (mode != "cached" or unroll != 1):
        continue  # the layout only matters to decode loops
      if (mode == "full" and (bs > args.full_max_batch or decoding != "ar")):
        continue
      if (unroll != 1 or chunks != chunk_counts[0]) and (mode, decoding) != ("cached", "ar"):
        continue  # only the cached AR loop unrolls and chunks its cache
      opts = sampler.SamplingOptions(temperature=1.0, top_k=args.top_k, cfg_scale=cfg,
                                     plausibility=floor, decoding=decoding,
                                     draft_len=args.draft_len, unroll=unroll,
                                     cache_chunks=chunks)
      fn = sampler.make_sampler(model if layout == "split" else StackedDecodeModel(spec), opts,
                                empty_caption=empty, cached=(mode == "cached"),
                                with_calls=True)
      row = {"impl": "jax", "mode": mode, "decoding": decoding, "cfg_scale": cfg,
             "plausibility": floor, "unroll": unroll, "cache_chunks": chunks,
             "layers": layout, "batch": bs}
      variants.append((row, lambda r, fn=fn: fn(params, text,
                                                 place(sampler.image_keys(r, 0, bs)))))
    if ref is not None:
      text_t = torch.as_tensor(text_np, dtype=torch.long)
      for cfg in cfgs:
        row = {"impl": "torch", "mode": "cached", "decoding": "ar", "cfg_scale": cfg,
               "plausibility": 0.0, "batch": bs}
        variants.append((row, lambda r, cfg=cfg: (
            torch.manual_seed(r), ref.sample(text_t, cfg_scale=cfg, top_k=args.top_k))[1]))

    def call(fn, r):
      t0 = time.perf_counter()
      out = fn(r)
      if isinstance(out, tuple):  # jax: (tokens, calls)
        jax.block_until_ready(out)
        calls = int(out[1])
      else:
        calls = n_tok
      return time.perf_counter() - t0, calls

    for row, fn in variants:  # compile / warm up
      row["first_call_s"], _ = call(fn, 0)
    times = {id(row): [] for row, _ in variants}
    for r in range(args.repeats):  # alternate variants, one call each per round
      for row, fn in variants:
        seconds, calls = call(fn, r + 1)
        times[id(row)].append(seconds)
        row.setdefault("calls", []).append(calls)
    for row, _ in variants:
      t = min(times[id(row)])
      calls = float(np.mean(row["calls"]))
      row.update(seconds=t, calls=calls, ms_per_call=t / calls * 1e3,
                 us_per_token=t / (bs * n_tok) * 1e6, tokens_per_s=bs * n_tok / t,
                 images_per_s=bs / t)
      rows_per_image = 2 if row["cfg_scale"] != 1.0 else 1
      flops = 2.0 * n_params * rows_per_image * bs * n_tok
      row["mfu"] = flops / t / peak if (peak and row["impl"] == "jax") else None
      if bw and row["impl"] == "jax" and row["mode"] == "cached":
        cache_rows = bs * rows_per_image
        # What a step must read: the filled part of the self-attention
        # cache, (N + 1) / 2 slots on average, and the caption's cross K/V.
        cache_bytes = 2 * spec.decoder_layers * cache_rows * ((n_tok + 1) / 2 + text_len) * \
            spec.num_heads * spec.head_dim * act_bytes
        floor_s = row["calls"] * (param_bytes + cache_bytes) / bw
        row.update(floor_s=floor_s, ratio_to_floor=t / floor_s)
      rows.append(row)
      print(f"{row['impl']:>5} {row['mode']:>6} {row['decoding']:>6} u={row.get('unroll', 1):<2d} "
            f"c={row.get('cache_chunks', 1):<2d} "
            f"{row.get('layers', ''):7s} "
            f"cfg={row['cfg_scale']:<3g} "
            f"a={row['plausibility']:<4g} batch={bs:<3d} {t*1e3:9.1f} ms  "
            f"calls {calls:6.1f}  {row['ms_per_call']:7.2f} ms/call  "
            f"{row['us_per_token']:8.1f} us/token  {row['tokens_per_s']:8.0f} tok/s"
            + (f"  {row['ratio_to_floor']:.2f}x floor" if "ratio_to_floor" in row else ""),
            flush=True)

  def find(**kw):
    return next((r for r in rows if all(r[k] == v for k, v in kw.items())), None)

  base = dict(mode="cached", plausibility=floors[0], unroll=unrolls[0],
              cache_chunks=chunk_counts[0], layers="split")
  summary = {}
  for r in rows:
    b, cfg = r["batch"], r["cfg_scale"]
    u = f"_unroll{r['unroll']}" if r.get("unroll", 1) != 1 else ""
    if r.get("cache_chunks", chunk_counts[0]) != chunk_counts[0]:
      u += f"_chunks{r['cache_chunks']}"
    if r["impl"] == "jax" and r["layers"] == "stacked":
      split = find(impl="jax", decoding=r["decoding"], cfg_scale=cfg, batch=b,
                   **{**base, "plausibility": r["plausibility"]})
      if split:
        summary[f"split_layers_speedup_{r['decoding']}_b{b}_cfg{cfg:g}"] = \
            r["seconds"] / split["seconds"]
      continue
    if r["impl"] == "jax" and r["mode"] == "cached" and r["decoding"] == "ar":
      b8 = find(impl="jax", decoding="ar", cfg_scale=cfg, batch=8, **base)
      if b8 and r["plausibility"] == floors[0]:
        summary[f"token_time_vs_batch8_b{b}_cfg{cfg:g}{u}"] = r["us_per_token"] / b8["us_per_token"]
      plain = find(impl="jax", decoding="ar", cfg_scale=1.0, batch=b,
                   **{**base, "unroll": r["unroll"], "cache_chunks": r["cache_chunks"]})
      if plain and cfg != 1.0 and r["plausibility"] == floors[0]:
        summary[f"cfg_cost_b{b}_cfg{cfg:g}{u}"] = r["seconds"] / plain["seconds"]
      t = find(impl="torch", cfg_scale=cfg, batch=b)
      if t and r["plausibility"] == floors[0]:
        summary[f"jax_vs_torch_speedup_b{b}_cfg{cfg:g}{u}"] = t["seconds"] / r["seconds"]
      one = find(impl="jax", decoding="ar", cfg_scale=cfg, batch=b,
                 **{**base, "plausibility": r["plausibility"], "unroll": r["unroll"],
                    "cache_chunks": 1})
      if one and r["cache_chunks"] > 1:
        summary[f"cache_chunks_speedup_b{b}_cfg{cfg:g}{u}"] = one["seconds"] / r["seconds"]
      full = find(impl="jax", mode="full", decoding="ar", cfg_scale=cfg, batch=b,
                  plausibility=r["plausibility"])
      if full:
        summary[f"cache_speedup_b{b}_cfg{cfg:g}_a{r['plausibility']:g}"] = \
            full["seconds"] / r["seconds"]
    if r["impl"] == "jax" and r["decoding"] == "jacobi":
      ar = find(impl="jax", decoding="ar", cfg_scale=cfg, batch=b, mode="cached",
                plausibility=r["plausibility"], layers="split", cache_chunks=chunk_counts[0])
      if ar:
        key = f"b{b}_cfg{cfg:g}_a{r['plausibility']:g}"
        summary[f"jacobi_fewer_calls_{key}"] = ar["calls"] / r["calls"]
        summary[f"jacobi_speedup_{key}"] = ar["seconds"] / r["seconds"]

  print("\n| impl | decoding | cfg | plausibility | batch | ms per batch | calls per image | "
        "ms per call | µs per token | tokens/s | images/s |\n|---|---|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    unrolled = f" (unroll {r['unroll']})" if r.get("unroll", 1) != 1 else ""
    unrolled += (f" ({r['cache_chunks']} cache chunks)"
                 if r["decoding"] == "ar" and r.get("cache_chunks", 1) != 1 else "")
    unrolled += " (stacked layers)" if r.get("layers") == "stacked" else ""
    print(f"| {r['impl']}{' full' if r['mode'] == 'full' else ''} | {r['decoding']}{unrolled} | "
          f"{r['cfg_scale']:g} | {r['plausibility']:g} | {r['batch']} | {r['seconds']*1e3:.0f} | "
          f"{r['calls']:.1f} | {r['ms_per_call']:.2f} | {r['us_per_token']:.1f} | "
          f"{r['tokens_per_s']:.0f} | {r['images_per_s']:.2f} |")
  for k, v in summary.items():
    print(f"{k}: {v:.2f}")
  result = {"benchmark": "sample", "device": device.device_kind, "platform": device.platform,
            "num_devices": len(jax.devices()),
            "config": args.config, "overrides": (SMALL if small else []) + args.config_overrides,
            "params": n_params, "tokens_per_image": n_tok, "draft_len": args.draft_len,
            "rows": rows, "summary": summary}
  line = json.dumps(result)
  if args.json_out:
    files.write_text(args.json_out, line + "\n")
  print(line)
  return 0


if __name__ == "__main__":
  sys.exit(main())
