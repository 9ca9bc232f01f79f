"""`vlgen demo`: the whole pipeline, stage by stage, resumable.

  vlgen demo --workdir W                       the shapes quick start
  vlgen demo --workdir W --data DIR [--resolution 64] [--budget quick|full]
                                               your own captioned images

  [data →] text tokenizer → VQ → encode → text-to-image → sample → eval

With --data, DIR holds train/ and optionally validation/ (captions.tsv +
images, or WebDataset *.tar shards; vlgen_jax/data/layout.py), and the
recipe (VQ factor and codes, model size, steps) is derived from the data
(vlgen_jax/recipe.py), printed and written to W/recipe.json before any
stage runs; bad input is one error and nothing is written. There is no data
stage (the data is read where it is), the sample stage draws the first
validation captions (W/prompts.txt) and the eval stage reports retrieval
accuracy instead of shapes fidelity.

Recipes with a `caption` section also train a captioner on the token dataset
(after t2i) and evaluate with reranking among its candidates (eval_rerank).
A `judge` section (with `caption.rerank` contrastive) trains one more t2i run
on the same tokens, usually the masked family, whose token likelihoods the
contrastive rule compares captions by (docs/captioning.md).

Each stage runs the same `vlgen` subcommand a user would run by hand, inside
one process, writing into the demo workdir:

  WORKDIR/data/                 shapes (TFDS ArrayRecord; not with --data)
  WORKDIR/recipe.json           the recipe derived from --data
  WORKDIR/text_tokenizer.model  SentencePiece model
  WORKDIR/vq/                   VQ tokenizer run (vlgen train)
  WORKDIR/tokens/               VQ token dataset (vlgen encode)
  WORKDIR/t2i/                  text-to-image run (vlgen train)
  WORKDIR/caption/              captioner run (recipes with `caption`; docs/captioning.md)
  WORKDIR/judge/                the contrastive rule's t2i run (recipes with `judge`)
  WORKDIR/samples/              vlgen sample on a few prompts (grid.png)
  WORKDIR/eval/                 vlgen eval report (grid.png, results.json)
  WORKDIR/eval_rerank/          the same eval, each image one of `caption.candidates` kept by the captioner
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

from vlgen_jax import files
from vlgen_jax.errors import UserError

HELP = ("run the whole pipeline (tokenizer → VQ → encode → t2i → sample → eval) on your "
        "images (--data DIR) or on shapes")

STAGES = ("data", "tokenizer", "vq", "encode", "t2i", "caption", "judge", "sample", "eval",
          "eval_rerank")
OWN_STAGES = STAGES[1:]
STATE_FILE = "demo.json"
RECIPE_FILE = "recipe.json"
PROMPTS_FILE = "prompts.txt"


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--data", default=None,
                      help="your data: DIR with train/ (and optionally validation/), each "
                           "captions.tsv + images or *.tar shards (default: shapes)")
  parser.add_argument("--resolution", type=int, default=None,
                      help="with --data: image size in px (default 64)")
  parser.add_argument("--budget", default=None,
                      help="with --data: quick (default; ~15 min on a 2-core CPU for ~5k "
                           "images) or full")
  parser.add_argument("--config", default="configs/demo_quickstart.py",
                      help="shapes demo recipe (default: the quick start); --config.key=value "
                           "overrides (with --data: of the derived recipe)")
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
  files.write_json(os.path.join(workdir, STATE_FILE), state)


def _vlgen(*argv) -> None:
  """Runs one `vlgen` subcommand in this process; a failure stops the demo."""
  from vlgen_jax import cli
  rc = cli.main([str(a) for a in argv])
  if rc:
    raise UserError(f"demo stage failed: vlgen {argv[0]} exited with {rc}")


TRAINING_STAGES = ("vq", "t2i", "caption", "judge")  # each trains the run in w[stage]


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


def own_stage_commands(c, w: dict[str, str]) -> dict[str, list]:
  """The `vlgen` command of each stage for --data (what a user would type)."""
  d = c.data
  flag = "--folder" if d.source == "folder" else "--tar"
  splits = (f"train={d.train_split},validation={d.validation_split}"
            if d.validation_held_out else "train,validation")
  return {
      "tokenizer": ["text-tokenizer", flag, d.data_dir, "--split", d.train_split,
                    "--vocab-size", c.text_vocab_size, "--output", w["tokenizer"]],
      "vq": ["train", "--config", c.vq.config, "--workdir", w["vq"], *_overrides(c.vq.overrides)],
      "encode": ["encode", "--workdir", w["vq"], "--output", w["tokens"], "--splits", splits],
      "t2i": ["train", "--config", c.t2i.config, "--workdir", w["t2i"],
              f"--config.data.data_dir={w['tokens']}",
              f"--config.data.tokenizer={w['tokenizer']}", *_overrides(c.t2i.overrides)],
      "sample": ["sample", "--workdir", w["t2i"], "--outdir", w["samples"],
                 "--prompts", w["prompts"], "--num-per-prompt", c.sample.num_per_prompt,
                 "--seed", c.seed],
      "eval": ["eval", "--workdir", w["t2i"], "--split", c.eval.split, "--num", c.eval.num,
               "--report", w["eval"], "--seed", c.seed],
  }


def _write_prompts(c, w) -> None:
  """The first validation captions of the token dataset, and the empty one."""
  from vlgen_jax.data import token_records  # pylint: disable=g-import-not-at-top
  source = token_records.TokenRecordSource(w["tokens"], "validation")
  captions = [token_records.decode_token_record(source[i])[1]
              for i in range(min(int(c.sample.num_prompts), len(source)))]
  files.write_text(w["prompts"], "".join(f"{p}\n" for p in [*captions, ""]))


def _own_recipe(args, workdir: str):
  """The recipe for --data, checked against one a previous run recorded."""
  from vlgen_jax import recipe as recipe_lib  # pylint: disable=g-import-not-at-top
  from vlgen_jax.config import apply_override  # pylint: disable=g-import-not-at-top
  c = recipe_lib.build(args.data, resolution=64 if args.resolution is None else args.resolution,
                       budget=args.budget or "quick")
  for item in args.config_overrides:
    apply_override(c, item)
  path = os.path.join(workdir, RECIPE_FILE)
  if os.path.exists(path):
    with open(path) as f:
      before = json.load(f)
    if before != json.loads(recipe_lib.to_json(c)):
      raise UserError(f"{workdir} holds a demo of another recipe ({path}); use a new "
                      "--workdir, or the same --data/--resolution/--budget to resume")
  return c


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
                 "--splits", "train,validation,heldout", "--overwrite"],
      "t2i": ["train", "--config", c.t2i.config, "--workdir", w["t2i"],
              f"--config.data.data_dir={w['tokens']}",
              f"--config.data.tokenizer={w['tokenizer']}", *_overrides(c.t2i.overrides)],
      "sample": ["sample", "--workdir", w["t2i"], "--outdir", w["samples"],
                 *[a for p in c.sample.prompts for a in ("--prompt", p)],
                 "--num-per-prompt", c.sample.num_per_prompt, "--seed", c.seed, "--overwrite"],
      "eval": ["eval", "--workdir", w["t2i"], "--split", c.eval.split, "--num", c.eval.num,
               "--report", w["eval"], "--seed", c.seed],
  }
  if "caption" in c:
    commands["caption"] = ["train", "--config", c.caption.config, "--workdir", w["caption"],
                           f"--config.data.data_dir={w['tokens']}",
                           f"--config.data.tokenizer={w['tokenizer']}",
                           *_overrides(c.caption.overrides)]
    # Optional: the rule (default consistent) and the sampling it keeps from
    # (e.g. temperature 1.0, top-k 0: reranking raises fidelity, so the kept
    # images can vary as the data does; docs/captioning.md).
    sampling = c.caption.get("sampling", {})
    commands["eval_rerank"] = [*commands["eval"][:-4], "--report", w["eval_rerank"],
                               "--seed", c.seed, "--scorer", w["caption"],
                               "--candidates", c.caption.candidates,
                               "--rerank", c.caption.get("rerank", "consistent"),
                               *[a for k in sorted(sampling)
                                 for a in (f"--{k.replace('_', '-')}", sampling[k])]]
    if "judge" in c:
      if c.caption.get("rerank") != "contrastive":
        raise UserError("the recipe's judge section needs caption.rerank='contrastive' "
                        "(only that rule asks a judge)")
      commands["judge"] = ["train", "--config", c.judge.config, "--workdir", w["judge"],
                           f"--config.data.data_dir={w['tokens']}",
                           f"--config.data.tokenizer={w['tokenizer']}",
                           *_overrides(c.judge.overrides)]
      commands["eval_rerank"] += ["--judge", w["judge"]]
  return commands


def _portable(command, workdir: str) -> list[str]:
  """A stage's command as recorded in demo.json: strings, the workdir as
  WORKDIR (a moved workdir is the same demo)."""
  return [str(a).replace(workdir, "WORKDIR") for a in command]


def _check_recipe(state: dict, recipe: dict, commands: dict, workdir: str, redo: set,
                  stages) -> None:
  """A finished stage whose command the recipe now changes would be skipped,
  and its old results reported as the new recipe's: a UserError instead,
  naming the stages to redo (that stage and every later one)."""
  changed = []
  for stage in STAGES:
    record = state["stages"].get(stage, {})
    if not record.get("done") or stage in redo or stage not in stages:
      continue
    recorded = record.get("command")
    if recorded is None:  # a demo.json from before commands were recorded
      if state.get("recipe") != json.loads(json.dumps(recipe)):
        changed.append(stage)
      continue
    if recorded != _portable(commands[stage], workdir):
      changed.append(stage)
  if changed:
    first = STAGES.index(changed[0])
    later = [s for s in STAGES[first:] if state["stages"].get(s, {}).get("done")]
    raise UserError(f"the demo recipe changed since {workdir} was run: stage(s) "
                    f"{', '.join(changed)} would now run differently and their results are from "
                    f"the old recipe; use a new --workdir, or rerun with --redo {','.join(later)}")


def run(args) -> int:
  from vlgen_jax.config import load_config
  workdir = os.path.abspath(args.workdir)
  own = args.data is not None
  if not own and (args.resolution is not None or args.budget is not None):
    raise UserError("--resolution and --budget apply to --data (the shapes demo's recipe is "
                    "--config)")
  all_stages = OWN_STAGES if own else STAGES
  stages = [s.strip() for s in args.stages.split(",") if s.strip() and not (own and s == "data")]
  redo = {s.strip() for s in args.redo.split(",") if s.strip()}
  for s in [*stages, *redo]:
    if s not in all_stages:
      raise UserError(f"unknown demo stage {s!r}; stages are {', '.join(all_stages)}")
  # Every check (data layout, budget, resolution) before anything is written.
  c = _own_recipe(args, workdir) if own else load_config(args.config, args.config_overrides)
  w = {"data": os.path.join(workdir, "data"),
       "tokenizer": os.path.join(workdir, "text_tokenizer.model"),
       "prompts": os.path.join(workdir, PROMPTS_FILE),
       **{k: os.path.join(workdir, k) for k in ("vq", "tokens", "t2i", "caption", "judge",
                                                "samples", "eval", "eval_rerank")}}
  commands = own_stage_commands(c, w) if own else stage_commands(c, w)
  os.makedirs(workdir, exist_ok=True)
  if own:
    from vlgen_jax import recipe as recipe_lib  # pylint: disable=g-import-not-at-top
    print(recipe_lib.describe(c), flush=True)
    files.write_text(os.path.join(workdir, RECIPE_FILE), recipe_lib.to_json(c))
  state = _load_state(workdir)
  _check_recipe(state, c.to_dict(), commands, workdir, redo, stages)
  state["recipe"] = c.to_dict()
  # `vlgen sample/eval --workdir DEMO` find the runs here (vlgen_jax/runs.py).
  state["runs"] = {"t2i": w["t2i"], "vq": w["vq"],
                   **({"caption": w["caption"]} if "caption" in c else {})}
  total = time.perf_counter()
  for stage in all_stages:
    if stage not in stages or stage not in commands:
      continue
    done = state["stages"].get(stage, {}).get("done")
    if done and stage not in redo:
      print(f"[demo] {stage}: done earlier ({state['stages'][stage]['seconds']:.0f} s), skipped")
      continue
    print(f"[demo] {stage}: vlgen {' '.join(str(a) for a in commands[stage])}", flush=True)
    start = time.perf_counter()
    if own and stage == "sample":
      _write_prompts(c, w)
    _vlgen(*commands[stage])
    seconds = time.perf_counter() - start
    if stage in TRAINING_STAGES:
      why = _unfinished_training(w[stage])
      if why:
        # Not marked done: a re-run resumes this stage from its checkpoint.
        print(f"[demo] {stage}: {why}; re-run the same command to resume", flush=True)
        _save_state(workdir, state)
        return 0
    state["stages"][stage] = {"done": True, "seconds": seconds,
                              "command": _portable(commands[stage], workdir)}
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
    e = summary[key]
    if "t2i" in e and key == "eval":
      print(f"  t2i {c.eval.split} loss {e['t2i']['loss']:.3f} nats/token "
            f"({e['t2i']['bits_per_token']:.3f} bits)"
            + (f"; VQ reconstruction PSNR {e['vq']['psnr']:.2f} dB" if "vq" in e else ""))
    if "retrieval" in e:
      r = e["retrieval"]
      print(f"  retrieval{how} on {r['n']} {c.eval.split} captions (nearest of R={r['R']} at "
            f"{r['size']} px): top-1 {r['top1']:.3f}, top-5 {r['top5']:.3f}")
    for name, v in e.items():
      if isinstance(v, dict) and "fidelity" in v:
        print(f"  {name} fidelity{how} on {v['n']} {c.eval.split} captions: {v['fidelity']:.3f} "
              f"(count {v['count']:.3f}, color {v['color']:.3f}, shape {v['shape']:.3f}, "
              f"size {v['size']:.3f}, position {v['position']:.3f})")
    print(f"  grid: {os.path.join(w[key], 'grid.png')}")
  print(f"  samples: {os.path.join(w['samples'], 'grid.png')}")
  return 0
