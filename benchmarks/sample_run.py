"""AR vs speculative Jacobi decoding on a *trained* text-to-image run.

`benchmarks/sample.py` times randomly initialised models; how many tokens a
Jacobi window accepts depends on what the model has learned, so its wall-time
figure needs a trained run. This loads one (`vlgen train` t2i workdir, its
export, or a `vlgen demo` workdir), samples the first `--batch` prompts of
`--prompts` (a text file, one caption per line) at the run's own sampling
settings (`config.sample`, as `vlgen sample` would), and times AR against
Jacobi at each `--draft-lens`. Every variant is compiled first, then the
variants run alternately `--repeats` times (the minimum is kept), each round
with new keys. Reported per variant: wall time per batch, sequential decoder
calls per image, ms per call, images/s, and the speed-up over AR. Prints a
table and one JSON line.

  python benchmarks/sample_run.py --workdir RUN --prompts captions.txt --batch 8
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse(argv):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", required=True, help="a trained t2i run (or a demo workdir)")
  p.add_argument("--prompts", required=True, help="text file, one caption per line")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--draft-lens", default="4,8,16", help="Jacobi windows to compare with AR")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--dtype", default=None, help="override the run's compute dtype")
  p.add_argument("--json-out", default="")
  args = p.parse_args(argv)
  try:
    args.draft_lens = [int(k) for k in args.draft_lens.split(",")]
  except ValueError:
    p.error(f"--draft-lens must be comma-separated integers, got {args.draft_lens!r}")
  if args.batch < 1 or args.repeats < 1 or min(args.draft_lens) < 1:
    p.error("--batch, --repeats and every draft length must be >= 1")
  return args


def run(args) -> dict:
  import jax
  import numpy as np
  from vlgen_jax.errors import UserError
  from vlgen_jax.sample import sampler
  from vlgen_jax.sample.generator import Generator

  if not os.path.isfile(args.prompts):
    raise UserError(f"--prompts {args.prompts} is not a file")
  with open(args.prompts, encoding="utf-8") as f:
    prompts = [line.strip() for line in f if line.strip()][:args.batch]
  if len(prompts) < args.batch:
    raise UserError(f"--prompts {args.prompts} has {len(prompts)} captions, --batch needs "
                    f"{args.batch}")
  gen = Generator.load(args.workdir, dtype=args.dtype)
  if args.batch % gen.data_parallel_size:
    raise UserError(f"--batch {args.batch} must be a multiple of the "
                    f"{gen.data_parallel_size} data-parallel devices")
  base = sampler.SamplingOptions.from_config(gen.config)
  text = gen.to_global(gen.tokenizer.encode_batch(prompts, gen.spec.text_length))
  device = jax.devices()[0]
  print(f"device: {device.device_kind} ({device.platform}) x {len(jax.devices())}; "
        f"run: {gen.run} step {gen.step}; tokens per image: {gen.spec.num_image_tokens}; "
        f"sampling: T {base.temperature} top-k {base.top_k} cfg {base.cfg_scale} "
        f"plausibility {base.plausibility}; batch {args.batch}", flush=True)

  variants = [("ar", 0)] + [("jacobi", k) for k in args.draft_lens]
  fns = {}
  for decoding, k in variants:
    opts = dataclasses.replace(base, decoding=decoding, draft_len=k or base.draft_len)
    fns[(decoding, k)] = sampler.make_sampler(
        gen.model, opts, empty_caption=gen.empty_caption(), mesh=gen.mesh,
        param_shardings=gen.param_shardings, logical_axis_rules=gen.rules, with_calls=True)

  def call(fn, seed):
    keys = gen._global_keys(sampler.image_keys(seed, 0, args.batch))
    t0 = time.perf_counter()
    tokens, calls = jax.block_until_ready(fn(gen.params, text, keys))
    return time.perf_counter() - t0, int(calls)

  rows = {v: {"decoding": v[0], "draft_len": v[1], "times": [], "calls": []} for v in variants}
  for v in variants:  # compile / warm up
    rows[v]["first_call_s"], _ = call(fns[v], 0)
  for r in range(args.repeats):  # alternate, new keys each round
    for v in variants:
      seconds, calls = call(fns[v], r + 1)
      rows[v]["times"].append(seconds)
      rows[v]["calls"].append(calls)
  ar_s = min(rows[("ar", 0)]["times"])
  out = []
  for v in variants:
    row = rows[v]
    t = min(row.pop("times"))
    calls = float(np.mean(row["calls"]))
    row.update(seconds=t, calls_per_image=calls, ms_per_call=t / calls * 1e3,
               images_per_s=args.batch / t, speedup_vs_ar=ar_s / t)
    out.append(row)
    name = "AR" if v[0] == "ar" else f"Jacobi K={v[1]}"
    print(f"{name:>12}  {t*1e3:9.1f} ms/batch  calls {calls:5.1f}  {row['ms_per_call']:6.2f} "
          f"ms/call  {row['images_per_s']:8.1f} images/s  {row['speedup_vs_ar']:5.2f}x AR  "
          f"(first call {row['first_call_s']:.1f} s)", flush=True)
  return {"benchmark": "sample_run", "device": device.device_kind, "platform": device.platform,
          "devices": len(jax.devices()), "run": gen.run, "step": gen.step, "batch": args.batch,
          "sampling": {"temperature": base.temperature, "top_k": base.top_k,
                       "cfg_scale": base.cfg_scale, "plausibility": base.plausibility},
          "rows": out}


def main(argv=None) -> int:
  args = parse(argv)
  from vlgen_jax.errors import UserError
  try:
    result = run(args)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  line = json.dumps(result)
  print(line)
  if args.json_out:
    tmp = args.json_out + ".tmp"
    with open(tmp, "w") as f:
      f.write(line + "\n")
    os.replace(tmp, args.json_out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
