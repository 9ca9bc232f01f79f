"""Step time of the shapes text-to-image model on XLA:CPU, per model option.

The ablation behind configs/t2i_shapes.py's CPU choices (docs/recipes.md):
each row switches one more option towards the recipe, measured in one run so
the ratios compare (absolute times depend on the machine and its load).

  JAX_PLATFORMS=cpu python benchmarks/t2i_cpu_step.py [--batch-size 64] [--steps 5]

Step: loss + gradients + AdamW update of `TextToImageTask` on random tokens
(jit-compiled, fastest of 3 windows of `--steps` steps after one warm-up).
Prints a markdown table and one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

# (label, overrides of configs/t2i_shapes.py), cumulative towards the recipe.
VARIANTS = (
    ("gelu, qk-norm, scanned layers", ("model.mlp=gelu", "model.qk_norm=True",
                                      "model.unroll_layers=False")),
    ("+ relu2 MLP", ("model.mlp=relu2", "model.qk_norm=True", "model.unroll_layers=False")),
    ("+ no qk-norm", ("model.mlp=relu2", "model.qk_norm=False", "model.unroll_layers=False")),
    ("+ unrolled layers (recipe)", ("model.mlp=relu2", "model.qk_norm=False",
                                    "model.unroll_layers=True")),
)


def step_time(overrides, batch_size: int, steps: int) -> float:
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  from vlgen_jax.config import load_config
  from vlgen_jax.tasks.t2i import TextToImageTask
  config = load_config(os.path.join(REPO_ROOT, "configs/t2i_shapes.py"),
                       [f"--config.{o}" for o in overrides])
  task = TextToImageTask(config)
  m = config.model
  rng = np.random.default_rng(0)
  batch = {"text_ids": jnp.asarray(rng.integers(4, 128, (batch_size, m.text_length)), jnp.int32),
           "image_tokens": jnp.asarray(rng.integers(0, m.image_vocab_size,
                                                    (batch_size, task.spec.num_image_tokens)),
                                       jnp.int32)}
  params = nn.unbox(jax.jit(task.init)(jax.random.key(0), batch)[0])
  tx = optax.adamw(1e-3)

  @jax.jit
  def step(p, o, b, key):
    (loss, _), g = jax.value_and_grad(lambda q: task.loss(q, {}, b, key, train=True),
                                      has_aux=True)(p)
    updates, o = tx.update(g, o, p)
    return optax.apply_updates(p, updates), o, loss

  p, o, loss = step(params, tx.init(params), batch, jax.random.key(1))
  loss.block_until_ready()
  best = float("inf")
  for window in range(3):
    start = time.perf_counter()
    for i in range(steps):
      p, o, loss = step(p, o, batch, jax.random.key(window * steps + i))
    loss.block_until_ready()
    best = min(best, (time.perf_counter() - start) / steps)
  return best


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--steps", type=int, default=5)
  args = parser.parse_args()
  rows = []
  for label, overrides in VARIANTS:
    seconds = step_time(overrides, args.batch_size, args.steps)
    rows.append({"variant": label, "step_ms": round(seconds * 1000, 1),
                 "examples_per_s": round(args.batch_size / seconds, 1)})
  base = rows[0]["step_ms"]
  print(f"| variant (batch {args.batch_size}) | step ms | examples/s | vs first |")
  print("| --- | --- | --- | --- |")
  for r in rows:
    print(f"| {r['variant']} | {r['step_ms']} | {r['examples_per_s']} | "
          f"{base / r['step_ms']:.2f}x |")
  print(json.dumps({"benchmark": "t2i_cpu_step", "batch_size": args.batch_size, "rows": rows}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
