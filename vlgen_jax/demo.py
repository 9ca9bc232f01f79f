"""`vlgen demo`: the whole pipeline on `shapes`, stage by stage, resumable.

  data → text tokenizer → VQ → encode → text-to-image → [captioner] → sample → eval
  → [eval with reranking]

Each stage runs the same `vlgen` subcommand a user would run by hand, inside
one process, writing into the demo workdir:

  WORKDIR/data/                 shapes (TFDS ArrayRecord)
  WORKDIR/text_tokenizer.model  SentencePiece model
  WORKDIR/vq/                   VQ tokenizer run (vlgen train)
  WORKDIR/tokens/               VQ token dataset (vlgen encode)
  WORKDIR/t2i/                  text-to-image run (vlgen train)
  WORKDIR/caption/              captioner run (recipes with `caption`; docs/captioning.md)
  WORKDIR/samples/              vlgen sample on a few prompts (grid.png)
  WORKDIR/eval/                 vlgen eval report (grid.png, results.json)
  WORKDIR/eval_rerank/          the same eval, each image the best of `caption.candidates`
  WORKDIR/demo.json             finished stages, their wall times, the runs

A re-run skips finished stages (and training stages resume from their
checkpoints), so an interrupted demo continues where it stopped.
`vlgen sample` and `vlgen eval` accept the demo workdir directly.
"""
from __future__ import annotations

import argparse
import json
import os
import time

from vlgen_jax.errors import UserError

HELP = "run the whole pipeline on shapes (data → tokenizer → VQ → encode → t2i → sample → eval)"

STAGES = ("data", "tokenizer", "vq", "encode", "t2i", "caption", "sample", "eval", "eval_rerank")
# Stages that run only when the recipe has a `caption` section.
CAPTION_STAGES = ("caption", "eval_rerank")
STATE_FILE = "demo.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--config", default="configs/demo_quickstart.py",
                      help="demo recipe (default: the quick start); --config.key=value overrides")
  parser.add_argument("--stages", default=",".join(STAGES),
                      help="comma-separated subset of stages to run (others must be done)")
  parser.add_argument("--redo", default="", help="comma-separated stages to run again")


def _load_state(workdir: str) -> dict:
  path = os.path.join(workdir, STATE_FILE)
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  return {"stages": {}}


def _save_state(workdir: str, state: dict) -> None:
  tmp = os.path.join(workdir, STATE_FILE + ".tmp")
  with open(tmp, "w") as f:
    json.dump(state, f, indent=2)
  os.replace(tmp, os.path.join(workdir, STATE_FILE))


def _vlgen(*argv) -> None:
  """Runs one `vlgen` subcommand in this process; a failure stops the demo."""
  from vlgen_jax import cli
  rc = cli.main([str(a) for a in argv])
  if rc:
    raise UserError(f"demo stage failed: vlgen {argv[0]} exited with {rc}")


TRAINING_STAGES = ("vq", "t2i", "caption")  # each trains the run in w[stage]


def _unfinished_training(run_dir: str) -> str | None:
  """Why the training run in `run_dir` is not finished, or None. `vlgen train`
  returns normally when stopped by SIGTERM (preemption: checkpoint saved), so
  a stage counts as done only once the run exported its final step."""
  from vlgen_jax.train import checkpoint
  total = int(checkpoint.load_config(run_dir).total_steps)
  exported = checkpoint.export_step(run_dir)
  if exported == total:
    return None
  saved = checkpoint.checkpoint_steps(run_dir)
  return (f"stopped before its last step (total_steps {total}, latest checkpoint: "
          f"{saved[-1] if saved else 'none'})")


def _overrides(items) -> list[str]:
  return [f"--config.{item}" for item in items]


def stage_commands(c, w: dict[str, str]) -> dict[str, list]:
  """The `vlgen` command of each stage (what a user would type)."""
  dataset = (f"shapes/res{c.resolution}_train{c.train_size}_val{c.validation_size}"
             f"_heldout{c.heldout_size}")
  data_overrides = [f"data.name={dataset}", f"data.data_dir={w['data']}",
                    f"data.resolution={c.resolution}"]
  commands = {
      "data": ["data", "shapes", "--data-dir", w["data"], "--resolution", c.resolution,
               "--train-size", c.train_size, "--validation-size", c.validation_size,
               "--heldout-size", c.heldout_size],
      "tokenizer": ["text-tokenizer", "--dataset", dataset, "--data-dir", w["data"],
                    "--vocab-size", c.text_vocab_size, "--output", w["tokenizer"]],
      "vq": ["train", "--config", c.vq.config, "--workdir", w["vq"],
             *_overrides(data_overrides), *_overrides(c.vq.overrides)],
      "encode": ["encode", "--workdir", w["vq"], "--output", w["tokens"],
                 "--splits", "train,validation,heldout"],
      "t2i": ["train", "--config", c.t2i.config, "--workdir", w["t2i"],
              f"--config.data.data_dir={w['tokens']}",
              f"--config.data.tokenizer={w['tokenizer']}", *_overrides(c.t2i.overrides)],
      "sample": ["sample", "--workdir", w["t2i"], "--outdir", w["samples"],
                 *[a for p in c.sample.prompts for a in ("--prompt", p)],
                 "--num-per-prompt", c.sample.num_per_prompt, "--seed", c.seed],
      "eval": ["eval", "--workdir", w["t2i"], "--split", c.eval.split, "--num", c.eval.num,
               "--report", w["eval"], "--seed", c.seed],
  }
  if "caption" in c:
    commands["caption"] = ["train", "--config", c.caption.config, "--workdir", w["caption"],
                           f"--config.data.data_dir={w['tokens']}",
                           f"--config.data.tokenizer={w['tokenizer']}",
                           *_overrides(c.caption.overrides)]
    commands["eval_rerank"] = [*commands["eval"][:-4], "--report", w["eval_rerank"],
                               "--seed", c.seed, "--scorer", w["caption"],
                               "--candidates", c.caption.candidates]
  return commands


def run(args) -> int:
  from vlgen_jax.config import load_config
  c = load_config(args.config, args.config_overrides)
  workdir = os.path.abspath(args.workdir)
  os.makedirs(workdir, exist_ok=True)
  stages = [s.strip() for s in args.stages.split(",") if s.strip()]
  redo = {s.strip() for s in args.redo.split(",") if s.strip()}
  for s in [*stages, *redo]:
    if s not in STAGES:
      raise UserError(f"unknown demo stage {s!r}; stages are {', '.join(STAGES)}")
  w = {"data": os.path.join(workdir, "data"),
       "tokenizer": os.path.join(workdir, "text_tokenizer.model"),
       **{k: os.path.join(workdir, k) for k in ("vq", "tokens", "t2i", "caption", "samples",
                                                "eval", "eval_rerank")}}
  commands = stage_commands(c, w)
  state = _load_state(workdir)
  state["recipe"] = c.to_dict()
  # `vlgen sample/eval --workdir DEMO` find the runs here (vlgen_jax/runs.py).
  state["runs"] = {"t2i": w["t2i"], "vq": w["vq"],
                   **({"caption": w["caption"]} if "caption" in c else {})}
  total = time.perf_counter()
  for stage in STAGES:
    if stage not in stages or stage not in commands:
      continue
    done = state["stages"].get(stage, {}).get("done")
    if done and stage not in redo:
      print(f"[demo] {stage}: done earlier ({state['stages'][stage]['seconds']:.0f} s), skipped")
      continue
    print(f"[demo] {stage}: vlgen {' '.join(str(a) for a in commands[stage])}", flush=True)
    start = time.perf_counter()
    _vlgen(*commands[stage])
    seconds = time.perf_counter() - start
    if stage in TRAINING_STAGES:
      why = _unfinished_training(w[stage])
      if why:
        # Not marked done: a re-run resumes this stage from its checkpoint.
        print(f"[demo] {stage}: {why}; re-run the same command to resume", flush=True)
        _save_state(workdir, state)
        return 0
    state["stages"][stage] = {"done": True, "seconds": seconds}
    _save_state(workdir, state)
    print(f"[demo] {stage}: finished in {seconds:.0f} s", flush=True)

  results = os.path.join(w["eval"], "results.json")
  summary = {"stage_seconds": {k: round(v["seconds"], 1) for k, v in state["stages"].items()},
             "this_run_seconds": round(time.perf_counter() - total, 1)}
  if os.path.exists(results):
    with open(results) as f:
      summary["eval"] = json.load(f)
  reranked = os.path.join(w["eval_rerank"], "results.json")
  if "caption" in c and os.path.exists(reranked):
    with open(reranked) as f:
      summary["eval_rerank"] = json.load(f)
  state["summary"] = summary
  _save_state(workdir, state)
  print("\n[demo] summary")
  for k, v in summary["stage_seconds"].items():
    print(f"  {k:<10} {v:8.1f} s")
  for key, how in (("eval", ""), ("eval_rerank", " (reranked)")):
    if key not in summary:
      continue
    for name, v in summary[key].items():
      if isinstance(v, dict) and "fidelity" in v:
        print(f"  {name} fidelity{how} on {v['n']} {c.eval.split} captions: {v['fidelity']:.3f} "
              f"(count {v['count']:.3f}, color {v['color']:.3f}, shape {v['shape']:.3f}, "
              f"size {v['size']:.3f}, position {v['position']:.3f})")
    print(f"  grid: {os.path.join(w[key], 'grid.png')}")
  print(f"  samples: {os.path.join(w['samples'], 'grid.png')}")
  return 0
