"""What a trained run is made of, as the run itself records it.

A text-to-image run is trained on a token dataset (`vlgen encode` output)
that names the VQ run which made it (`dataset_info.json` meta `vq_workdir`)
and on a SentencePiece model (`config.data.tokenizer`). Its export copies
both (`export/assets/text_tokenizer.model`, `export/assets/vq/export/`), so
an exported run samples on its own even after the VQ run or the tokenizer
file moved. Nothing here guesses from a folder layout; a `vlgen demo`
workdir names its runs in `demo.json`.
"""
from __future__ import annotations

import json
import os

from vlgen_jax.errors import UserError
from vlgen_jax.text.tokenizer import TOKENIZER_ASSET
from vlgen_jax.train import checkpoint

VQ_ASSET = "vq"          # export/assets/vq/: a params-only copy of the VQ run
DEMO_STATE = "demo.json"  # a `vlgen demo` workdir: {"runs": {"t2i": path, ...}}


def is_run(path: str) -> bool:
  return any(os.path.exists(os.path.join(path, *p))
             for p in (("config.json",), (checkpoint.EXPORT, "config.json")))


def demo_runs(workdir: str) -> dict[str, str]:
  """The runs a `vlgen demo` workdir recorded ({} if it is not one)."""
  path = os.path.join(workdir, DEMO_STATE)
  if not os.path.isfile(path):
    return {}
  try:
    with open(path, encoding="utf-8") as f:
      return dict(json.load(f).get("runs", {}))
  except (OSError, ValueError, AttributeError):
    return {}


def find_run(workdir: str, task: str) -> str:
  """The `task` run in `workdir`: itself, or the one a demo workdir names."""
  if not workdir or not os.path.isdir(workdir):
    raise UserError(f"workdir not found: {workdir}")
  candidates = [workdir]
  recorded = demo_runs(workdir).get(task)
  if recorded:
    candidates.append(recorded if os.path.isabs(recorded) else os.path.join(workdir, recorded))
  for cand in candidates:
    if is_run(cand) and checkpoint.load_config(cand).get("task") == task:
      return cand
  raise UserError(f"no {task} run in {workdir} (expected a `vlgen train` workdir of a {task} "
                  f"config, or a `vlgen demo` workdir)")


def t2i_config(workdir: str):
  """The config of the text-to-image run in `workdir` (cheap: no params)."""
  return checkpoint.load_config(find_run(workdir, "t2i"))


def tokenizer_of(run: str, config) -> str:
  """The run's SentencePiece model: its export's copy, else the recorded file."""
  candidates = [os.path.join(run, checkpoint.EXPORT, "assets", TOKENIZER_ASSET),
                config.data.tokenizer]
  for path in candidates:
    if path and os.path.exists(path):
      return path
  raise UserError(f"the run in {run} has no text tokenizer (looked for "
                  f"export/assets/{TOKENIZER_ASSET} and config.data.tokenizer "
                  f"{config.data.tokenizer!r})")


def recorded_vq_run(config) -> str:
  """The VQ run the config's token dataset was encoded with ('' if none)."""
  from vlgen_jax.data import token_records
  data_dir = config.data.data_dir
  if config.data.source != "tokens" or not data_dir:
    return ""
  if not os.path.exists(os.path.join(data_dir, token_records.INFO_FILE)):
    return ""
  return token_records.read_info(data_dir)["meta"].get("vq_workdir", "")


def vq_of(run: str, config, override: str | None = None) -> str:
  """The VQ run whose codes the t2i run predicts: `override` (--vq-workdir),
  the export's copy, or the run recorded by its token dataset."""
  if override:
    if not is_run(override):
      raise UserError(f"--vq-workdir {override} is not a `vlgen train` run")
    return override
  candidates = [os.path.join(run, checkpoint.EXPORT, "assets", VQ_ASSET),
                recorded_vq_run(config)]
  for path in candidates:
    if path and is_run(path):
      return path
  raise UserError(f"the run in {run} records no usable VQ run (its token dataset "
                  f"{config.data.data_dir!r} names {recorded_vq_run(config)!r}); "
                  f"pass --vq-workdir")
