"""Sampling wall time per image of the model families at one batch size, in ONE run.

Each family's shapes config (configs/t2i_shapes.py = "encdec",
t2i_shapes_masked.py, t2i_shapes_decoder_only.py) is built with freshly
initialised params (time does not depend on the weights), compiled once, then
timed in alternating rounds (A, B, C, A, B, C, ...) so load on a shared box
hits every family alike. Prints a table and one JSON object (last line);
speedups are relative to the enc-dec AR sampler.

  python benchmarks/families.py --batch 8 --rounds 5 --steps 12
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CONFIGS = {"encdec": "configs/t2i_shapes.py", "masked": "configs/t2i_shapes_masked.py",
           "decoder_only": "configs/t2i_shapes_decoder_only.py"}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--families", default="encdec,masked,decoder_only")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--steps", type=int, default=12, help="parallel steps of the masked family")
  p.add_argument("--cfg", type=float, default=1.0)
  p.add_argument("--json-out", default="")
  args = p.parse_args(argv)

  import jax
  import jax.numpy as jnp
  import numpy as np
  from vlgen_jax import files
  from vlgen_jax.config import load_config
  from vlgen_jax.model.spec import ModelSpec
  from vlgen_jax.sample import sampler
  from vlgen_jax.tasks.families import get_family

  fns = {}
  for name in args.families.split(","):
    config = load_config(CONFIGS[name], [f"--config.sample.steps={args.steps}",
                                         f"--config.sample.cfg_scale={args.cfg}"])
    spec = ModelSpec.from_config(config)
    model = get_family(spec.family).build_model(spec)
    text = np.full((args.batch, spec.text_length), 0, np.int32)
    text[:, :6] = [1, 5, 9, 13, 17, 2]
    params = jax.jit(lambda: model.init(jax.random.key(0), jnp.asarray(text),
                                        jnp.zeros((args.batch, spec.num_image_tokens),
                                                  jnp.int32))["params"])()
    params = jax.tree.map(lambda x: x.value if hasattr(x, "value") else x, params,
                          is_leaf=lambda x: hasattr(x, "value"))
    empty = np.zeros(spec.text_length, np.int32)
    empty[:2] = [1, 2]
    options = sampler.SamplingOptions.from_config(config)
    fn = sampler.make_sampler(model, options, empty_caption=empty)
    keys = sampler.image_keys(0, 0, args.batch)
    t0 = time.perf_counter()
    jax.block_until_ready(fn(params, text, keys))
    fns[name] = (fn, params, text, keys, time.perf_counter() - t0)

  times = {name: [] for name in fns}
  for _ in range(args.rounds):
    for name, (fn, params, text, keys, _) in fns.items():
      t0 = time.perf_counter()
      jax.block_until_ready(fn(params, text, keys))
      times[name].append(time.perf_counter() - t0)

  base = float(np.median(times["encdec"])) if "encdec" in times else None
  rows = {}
  print(f"{'family':14s} {'median s/batch':>15s} {'ms/image':>10s} {'vs encdec':>10s} "
        f"{'compile s':>10s}")
  for name, ts in times.items():
    med = float(np.median(ts))
    rows[name] = {"median_s_per_batch": med, "ms_per_image": 1000 * med / args.batch,
                  "speedup_vs_encdec": base / med if base else None,
                  "compile_s": fns[name][4], "all_s": ts}
    print(f"{name:14s} {med:15.4f} {1000 * med / args.batch:10.2f} "
          f"{(base / med if base else float('nan')):10.2f} {fns[name][4]:10.1f}")
  result = {"batch": args.batch, "rounds": args.rounds, "steps": args.steps, "cfg": args.cfg,
            "device": str(jax.devices()[0].device_kind), "families": rows}
  if args.json_out:
    files.write_json(args.json_out, result)
  print(json.dumps(result))
  return 0


if __name__ == "__main__":
  sys.exit(main())
