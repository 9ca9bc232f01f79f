"""`vlgen eval` as library functions: evaluate a run, or a folder of images."""
from __future__ import annotations

import json
import os
from typing import Mapping, Sequence

import jax
from tqdm import tqdm

from vlgen_jax.data import token_records
from vlgen_jax.errors import UserError
from vlgen_jax.eval import report as report_lib
from vlgen_jax.sample.generator import Generator, run_config
from vlgen_jax.sample.outputs import SAMPLE_INFO, read_prompts_file, write_outputs
from vlgen_jax.sample.sampler import SamplingOptions
from vlgen_jax.train import mesh as mesh_lib


def split_captions(config, split: str, num: int) -> list[str]:
  """The first `num` captions of `split` of the run's own token dataset."""
  data_dir = config.data.data_dir
  if config.data.source != "tokens" or not data_dir:
    raise UserError("the run was not trained on a token dataset (data.source=tokens); "
                    "pass --prompts FILE")
  source = token_records.TokenRecordSource(data_dir, split)
  if len(source) == 0:
    raise UserError(f"split {split!r} of {data_dir} is empty")
  return [token_records.decode_token_record(source[i])[1]
          for i in range(min(num, len(source)))]


def evaluate_run(workdir: str, *, split: str = "validation", num: int = 200,
                 prompts_file: str | None = None, report: str | None = None,
                 evaluator_names: Sequence[str] | None = None,
                 sampling_overrides: Mapping | None = None, seed: int = 0,
                 batch_size: int = 32, step: int | None = None,
                 vq_workdir: str | None = None, mesh: str | None = None) -> dict | None:
  """Samples captions of the run's split (or a prompts file), scores and
  reports them; returns the results on process 0 (None elsewhere)."""
  mesh_lib.maybe_initialize_distributed()  # several processes: before touching devices
  config = run_config(workdir)
  # Everything the user could get wrong is checked before params are loaded.
  options = SamplingOptions.from_config(config, **(sampling_overrides or {}))
  names = list(config.evaluators) if evaluator_names is None else list(evaluator_names)
  report_lib.evaluators_lib.build_all(names)
  captions = (read_prompts_file(prompts_file)[:num] if prompts_file
              else split_captions(config, split, num))
  gen = Generator.load(workdir, step=step, vq_workdir=vq_workdir, mesh_overrides=mesh)
  with tqdm(total=len(captions), desc=f"eval {split}", unit="img",
            disable=jax.process_index() != 0) as bar:
    images, _ = gen.generate(captions, options, seed=seed, batch_size=batch_size,
                             progress=bar.update)
  if jax.process_index() != 0:
    return None
  source = f"prompts-{os.path.basename(prompts_file)}" if prompts_file else split
  report = report or os.path.join(gen.run, "eval", f"{source}-{num}-cfg{options.cfg_scale:g}")
  write_outputs(os.path.join(report, "samples"), images, captions, captions_in_grid=False,
                info={"run": os.path.abspath(gen.run), "step": gen.step,
                      "evaluators": names})
  return report_lib.write_report(report, images, captions, names, {
      "split": None if prompts_file else split, "prompts": prompts_file,
      "step": gen.step, "cfg_scale": options.cfg_scale,
      "temperature": options.temperature, "top_k": options.top_k, "top_p": options.top_p,
      "plausibility": options.plausibility, "seed": seed, "report": report})


def evaluate_folder(folder: str, *, report: str | None = None,
                    evaluator_names: Sequence[str] | None = None) -> dict:
  """Scores the images of a folder with captions.tsv (e.g. `vlgen sample`'s)."""
  if evaluator_names is None:
    info_path = os.path.join(folder, SAMPLE_INFO)
    if not os.path.isfile(info_path):
      raise UserError(f"{folder} was not written by `vlgen sample` ({SAMPLE_INFO} missing); "
                      f"name the evaluators with --evaluators (registered: "
                      f"{', '.join(sorted(report_lib.evaluators_lib.EVALUATORS))})")
    with open(info_path, encoding="utf-8") as f:
      evaluator_names = json.load(f).get("evaluators", [])
  report_lib.evaluators_lib.build_all(evaluator_names)
  images, captions = report_lib.read_image_folder(folder)
  return report_lib.write_report(report or os.path.join(folder, "eval"), images, captions,
                                 evaluator_names, {"images": folder})
