"""Train-step benchmark: compile time, step time, tokens/s per device, MFU and
peak memory of the trainer's own jit-compiled step, over configs x meshes x
remat policies x batch sizes. Prints a markdown table and one JSON object
(last line).

  # CPU smoke run (8 forced CPU devices): toy + t2i_tiny on 3 meshes, t2i_tiny x 4 remat policies
  JAX_PLATFORMS=cpu python benchmarks/train_step.py

  # The Parti-350M MFU goal on one H100 (bf16, cuDNN flash attention):
  python benchmarks/train_step.py --config configs/parti.py:350m --mesh data=1 \
      --remat none,dots_no_batch,full --batch-size 16,32 --steps 20 \
      --config.dtype=bfloat16 --config.model.attention_impl=cudnn

Cases: each config x batch size runs on every `--mesh` with the config's own
remat policy, and on the first mesh with every `--remat` policy (the remat
comparison; by default for every `--config`, or for t2i_tiny, whose layers
remat themselves, in the default CPU run). The step is built exactly as `vlgen train` builds it (task, mesh,
logical-axis shardings, optimizer, `step.make_train_step`, donated state);
the same device batch is fed every step, so input-pipeline time is excluded.

Step time: wall time of `--steps` back-to-back steps (dispatched
asynchronously, blocked on at the end) divided by `--steps`, the fastest of
`--repeats` such windows, after `--warmup` untimed steps. MFU: the task's analytic training FLOPs per example
(model FLOPs: recomputation by remat does not count) x examples/s, over
devices x peak bf16 FLOP/s (`vlgen_jax.train.metrics.PEAK_BF16_FLOPS`); n/a
on CPU. Peak memory per device: `device.memory_stats()["peak_bytes_in_use"]`
(GPU/TPU; each case then runs in its own process, since that peak never
resets), else the compiled step's `memory_analysis()` (arguments + outputs +
temporaries - donated aliases), else n/a.

Configs whose task reads a dataset (t2i `data.source="tokens"`) are switched
to the task's synthetic data of the same shapes (`--no-synthetic` keeps them).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

DEFAULT_CONFIGS = ("configs/toy.py", "configs/t2i_tiny.py")
DEFAULT_MESHES = ("data=-1", "fsdp=-1", "data=2,fsdp=2,tensor=2")
DEFAULT_REMAT = "none,full,dots,dots_no_batch"
DEFAULT_REMAT_ON = ("configs/t2i_tiny.py",)  # with the default configs; else every --config
RESULT_PREFIX = "TRAIN_STEP_RESULT "


def _csv(text: str) -> list[str]:
  return [t.strip() for t in text.split(",") if t.strip()]


def build_cases(args) -> list[dict]:
  """Every (config, batch, mesh) at the config's remat, plus the remat sweep on
  the first mesh for the `--remat-on` configs; duplicates dropped, order kept."""
  from vlgen_jax.config import load_config
  configs = args.config or list(DEFAULT_CONFIGS)
  remat_on = args.remat_on or (list(DEFAULT_REMAT_ON) if not args.config else configs)
  meshes = args.mesh or list(DEFAULT_MESHES)
  batches = [int(b) for b in _csv(args.batch_size)] if args.batch_size else [0]
  cases, seen = [], set()
  for path in configs:
    own_remat = load_config(path, args.config_overrides).get("remat", "none")
    for batch in batches:
      candidates = [(mesh, own_remat) for mesh in meshes]
      if path in remat_on:
        candidates += [(meshes[0], policy) for policy in _csv(args.remat)]
      for mesh, remat in candidates:
        key = (path, batch, mesh, remat)
        if key not in seen:
          seen.add(key)
          cases.append({"config": path, "mesh": mesh, "remat": remat, "batch_size": batch})
  return cases


def _case_overrides(case: dict, args) -> list[str]:
  from vlgen_jax.train.mesh import parse_mesh
  sizes = parse_mesh(case["mesh"])
  items = [f"--config.mesh.{axis}={size}" for axis, size in sizes.items()]
  items.append(f"--config.remat={case['remat']}")
  if case["batch_size"]:
    items.append(f"--config.batch_size={case['batch_size']}")
  return list(args.config_overrides) + items


def _state_shardings(task, config, mesh, rules, key, example_abstract):
  """(abstract TrainState, its shardings, param shardings, init_fn, tx,
  schedules), from the trainer's own `abstract_train_state`."""
  from vlgen_jax.train.trainer import abstract_train_state
  abstract_state, state_shardings, init_fn, tx, schedules = abstract_train_state(
      task, config, mesh, rules, key, example_abstract)
  return abstract_state, state_shardings, state_shardings.params, init_fn, tx, schedules


def _memory_fields(compiled) -> dict:
  """Peak bytes per device, where that number comes from, and the compiled estimate."""
  import jax
  estimate = None
  try:
    m = compiled.memory_analysis()
  except Exception:  # Not every backend implements it.
    m = None
  if m is not None:
    estimate = int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
                   - m.alias_size_in_bytes)
  peaks = []
  for device in jax.local_devices():
    stats = device.memory_stats() or {}
    if "peak_bytes_in_use" in stats:
      peaks.append(int(stats["peak_bytes_in_use"]))
  if peaks:
    peak, source = max(peaks), "device"
  elif estimate is not None:
    peak, source = estimate, "compiled"
  else:
    peak, source = None, "n/a"
  return {"peak_bytes_per_device": peak, "peak_memory_source": source,
          "compiled_bytes_per_device": estimate}


def run_case(case: dict, args) -> dict:
  """Builds and times one case in this process; returns its result row."""
  import jax
  import numpy as np
  from vlgen_jax.config import load_config
  from vlgen_jax.train import mesh as mesh_lib
  from vlgen_jax.train import metrics as metrics_lib
  from vlgen_jax.train import numerics
  from vlgen_jax.train import sharding as shd
  from vlgen_jax.train import step as step_lib
  from vlgen_jax.train import validation
  from vlgen_jax.tasks import build_task

  start = time.perf_counter()
  config = load_config(case["config"], _case_overrides(case, args))
  if args.synthetic and config.get("task") == "t2i" and config.data.get("source") != "synthetic":
    config.data.source = "synthetic"
  validation.check_config(config)
  task = build_task(config)
  mesh = mesh_lib.create_mesh(config)
  rules = shd.logical_axis_rules(config)
  validation.check_batch(config, data_parallel=mesh_lib.data_parallel_size(mesh))
  batch_size = int(config.batch_size)
  device = jax.devices()[0]
  row = dict(case, batch_size=batch_size, mesh_shape=dict(mesh.shape),
             devices=int(mesh.devices.size), device=str(device.device_kind),
             platform=device.platform, dtype=np.dtype(numerics.compute_dtype(config)).name,
             micro_batches=int(config.micro_batches))

  index, count, local_size = shd.process_data_shard(mesh, batch_size)
  it = task.input_iterator(config.train_split, batch_size=local_size, train=True,
                           seed=int(config.seed), process_index=index, process_count=count)
  local = next(it)

  with shd.mesh_context(mesh, rules):
    key = jax.random.PRNGKey(int(config.seed))
    example_abstract = shd.abstract_batch(local, mesh, batch_size)
    abstract_state, state_shardings, param_shardings, init_fn, tx, schedules = _state_shardings(
        task, config, mesh, rules, key, example_abstract)
    step_fn = jax.jit(
        step_lib.make_train_step(task, tx, schedules, config, mesh, param_shardings),
        in_shardings=(state_shardings, shd.batch_sharding(mesh)),
        out_shardings=(state_shardings, shd.replicated(mesh)), donate_argnums=0)
    if args.compile_only:
      # Sizes a step without allocating it (e.g. a Parti preset on forced CPU devices).
      t0 = time.perf_counter()
      compiled = step_fn.lower(shd.with_shardings(abstract_state, state_shardings),
                               example_abstract).compile()
      row["compile_s"] = time.perf_counter() - t0
      row.update(_memory_fields(compiled), step_time_s=None, examples_per_s_per_device=None,
                 tokens_per_s_per_device=None, mfu=None, loss=None)
      return row
    batch = shd.global_batch(local, mesh, batch_size)
    state = jax.jit(init_fn, out_shardings=state_shardings)(key, batch)
    jax.block_until_ready(state)
    row["setup_s"] = time.perf_counter() - start  # config, task, data, init
    t0 = time.perf_counter()
    compiled = step_fn.lower(state, batch).compile()
    row["compile_s"] = time.perf_counter() - t0

    for _ in range(args.warmup):
      state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics) if args.warmup else state)
    windows = []
    for _ in range(args.repeats):
      t0 = time.perf_counter()
      for _ in range(args.steps):
        state, metrics = compiled(state, batch)
      jax.block_until_ready((state, metrics))
      windows.append((time.perf_counter() - t0) / args.steps)
  # The fastest window: other load on the machine only ever adds time.
  seconds = min(windows) * args.steps
  row["window_step_times_s"] = windows

  row["loss"] = float(jax.device_get(metrics["loss"]))
  perf = metrics_lib.perf_metrics(
      steps=args.steps, seconds=seconds, examples_per_step=batch_size,
      tokens_per_example=int(task.tokens_per_example()),
      flops_per_example=float(task.flops_per_example()), num_devices=int(mesh.devices.size),
      peak=metrics_lib.peak_flops(device))
  row.update({k.split("/", 1)[1]: v for k, v in perf.items()})
  row["flops_per_example"] = float(task.flops_per_example())
  row["tokens_per_example"] = int(task.tokens_per_example())
  row.update(_memory_fields(compiled))
  return row


def _error_row(case: dict, message: str) -> dict:
  return dict(case, error=message.strip().splitlines()[-1][:300] if message.strip() else "failed")


def run_isolated(case: dict, args, env: dict) -> dict:
  """Runs one case in a fresh process (its own device memory peak)."""
  cmd = [sys.executable, os.path.abspath(__file__), "--run-case", json.dumps(case),
         "--steps", str(args.steps), "--warmup", str(args.warmup), "--repeats", str(args.repeats),
         "--synthetic" if args.synthetic else "--no-synthetic",
         *(["--compile-only"] if args.compile_only else []), *args.config_overrides]
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
  for line in proc.stdout.splitlines():
    if line.startswith(RESULT_PREFIX):
      return json.loads(line[len(RESULT_PREFIX):])
  return _error_row(case, proc.stderr or proc.stdout or f"exit status {proc.returncode}")


def _fmt_bytes(n) -> str:
  if n is None:
    return "n/a"
  for scale, unit in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
    if n >= scale:
      return f"{n / scale:.2f} {unit}"
  return f"{n} B"


def format_table(rows: list[dict]) -> str:
  head = ("| config | mesh | remat | batch | dtype | compile s | step ms | tokens/s/device | MFU "
          "| peak mem/device |")
  lines = [head, "|---" * (head.count("|") - 1) + "|"]
  for r in rows:
    name = os.path.splitext(os.path.basename(r["config"]))[0]
    mesh = ",".join(f"{a}={s}" for a, s in r.get("mesh_shape", {}).items()) or r["mesh"]
    if "error" in r:
      lines.append(f"| {name} | {mesh} | {r['remat']} | {r.get('batch_size') or 'config'} | | | | "
                   f"| | error: {r['error']} |")
      continue
    mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
    step = "-" if r["step_time_s"] is None else f"{1000 * r['step_time_s']:.1f}"
    tokens = "-" if r["tokens_per_s_per_device"] is None else f"{r['tokens_per_s_per_device']:.4g}"
    mem = _fmt_bytes(r["peak_bytes_per_device"])
    if r["peak_memory_source"] == "compiled":
      mem += " (compiled)"
    lines.append(f"| {name} | {mesh} | {r['remat']} | {r['batch_size']} | {r['dtype']} "
                 f"| {r['compile_s']:.1f} | {step} | {tokens} | {mfu} | {mem} |")
  return "\n".join(lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", action="append",
                 help=f"config file; repeat for several (default: {', '.join(DEFAULT_CONFIGS)})")
  p.add_argument("--mesh", action="append",
                 help="mesh axis sizes like data=2,fsdp=4,tensor=1 (one -1 fills); repeat for "
                      f"several (default: {' / '.join(DEFAULT_MESHES)})")
  p.add_argument("--remat", default=DEFAULT_REMAT,
                 help="remat policies compared on the first mesh (comma list; '' = none)")
  p.add_argument("--remat-on", action="append",
                 help="configs that get the remat comparison; repeat for several (default: "
                      f"every --config; {', '.join(DEFAULT_REMAT_ON)} with the default configs)")
  p.add_argument("--batch-size", default="",
                 help="global batch sizes, comma list (default: each config's batch_size)")
  p.add_argument("--steps", type=int, default=5, help="timed steps per window")
  p.add_argument("--repeats", type=int, default=3,
                 help="timed windows per case; the step time is the fastest window's")
  p.add_argument("--warmup", type=int, default=1, help="untimed steps after compiling")
  p.add_argument("--cpu-devices", type=int, default=8,
                 help="forced host devices when running on CPU (XLA_FLAGS)")
  p.add_argument("--isolate", choices=("auto", "yes", "no"), default="auto",
                 help="one process per case; auto: yes unless JAX_PLATFORMS=cpu (device memory "
                      "peaks never reset within a process)")
  p.add_argument("--synthetic", action=argparse.BooleanOptionalAction, default=True,
                 help="feed t2i configs synthetic data of their shapes (no dataset needed)")
  p.add_argument("--compile-only", action="store_true",
                 help="only compile each step on abstract inputs and report its compiled memory "
                      "(nothing is allocated or run)")
  p.add_argument("--json-out", default="", help="also write the JSON result to this file")
  p.add_argument("--run-case", default="", help=argparse.SUPPRESS)
  rest = list(sys.argv[1:] if argv is None else argv)
  args, unknown = p.parse_known_args([a for a in rest if not a.startswith("--config.")])
  if unknown:
    p.error(f"unrecognized arguments: {' '.join(unknown)}")
  args.config_overrides = [a for a in rest if a.startswith("--config.")]
  if args.steps < 1 or args.repeats < 1 or args.warmup < 0:
    p.error("--steps and --repeats must be >= 1, --warmup >= 0")

  flag = f"--xla_force_host_platform_device_count={args.cpu_devices}"
  if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

  if args.run_case:  # A child of --isolate: one case, one result line.
    case = json.loads(args.run_case)
    try:
      row = run_case(case, args)
    except Exception as e:  # Reported as the case's error row (e.g. out of memory).
      traceback.print_exc()
      row = _error_row(case, f"{type(e).__name__}: {e}")
    print(RESULT_PREFIX + json.dumps(row), flush=True)
    return 0

  from vlgen_jax import files
  from vlgen_jax.errors import UserError
  try:
    cases = build_cases(args)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  isolate = args.isolate == "yes" or (
      args.isolate == "auto" and os.environ.get("JAX_PLATFORMS", "").lower() != "cpu")
  if not isolate:
    from vlgen_jax.train import mesh as mesh_lib
    mesh_lib.maybe_initialize_distributed()

  from tqdm import tqdm
  rows = []
  bar = tqdm(cases, desc="train_step", unit="case", dynamic_ncols=True)
  for case in bar:
    bar.set_postfix_str(f"{os.path.basename(case['config'])} {case['mesh']} {case['remat']}")
    if isolate:
      row = run_isolated(case, args, dict(os.environ))
    else:
      try:
        row = run_case(case, args)
      except Exception as e:  # One failing case (bad mesh, OOM) does not stop the sweep.
        row = _error_row(case, f"{type(e).__name__}: {e}")
    rows.append(row)
    bar.write(format_table([row]).splitlines()[-1])
  bar.close()

  ok = [r for r in rows if "error" not in r]
  first = ok[0] if ok else {}
  result = {"benchmark": "train_step", "device": first.get("device"),
            "platform": first.get("platform"), "devices": first.get("devices"),
            "steps": args.steps, "repeats": args.repeats, "warmup": args.warmup,
            "date": time.strftime("%Y-%m-%d"), "overrides": args.config_overrides, "rows": rows}
  print()
  print(format_table(rows))
  line = json.dumps(result)
  if args.json_out:
    files.write_text(args.json_out, line + "\n")
  print(line)
  return 0 if ok and len(ok) == len(rows) else 1


if __name__ == "__main__":
  sys.exit(main())
