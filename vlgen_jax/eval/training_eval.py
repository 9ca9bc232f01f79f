"""In-training sample evaluation of a text-to-image run (`TextToImageTask.evaluate`).

At each eval step (every `config.sample_eval.every` steps, and at the last
step) the trainer's current params sample one image for each of a fixed set
of captions, the first `config.sample_eval.num` of the token dataset's
`config.sample_eval.split`, with the run's `config.sample` options and a
fixed seed, so successive grids differ only by training. The VQ decoder is
the one named in the token dataset's metadata (or `sample_eval.vq_workdir`).

Logged: each of the run's evaluators' summary (`config.evaluators`, e.g.
`sample/fidelity` and per-attribute accuracies of "shapes"; captions an
evaluator cannot judge are counted in `sample/<name>_unscored`), and a grid
of the samples with their captions (green / red frames: caption satisfied or
not) as the TensorBoard image `sample/grid`, also saved as
`WORKDIR/samples/step_<step>.png`.

Every process runs the sampler (params are sharded over all of them); only
process 0 scores and writes.
"""
from __future__ import annotations

import os

import ml_collections
import numpy as np

from vlgen_jax.errors import UserError


def default_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      "num": 0,              # captions sampled at each sample eval; 0 disables it
      "every": 0,            # steps between sample evals (0: at every eval_every)
      "split": "validation",  # token dataset split the captions come from
      "batch_size": 64,
      "seed": 0,
      "vq_workdir": "",      # default: the token dataset's `vq_workdir`
  })


def is_due(config, step: int) -> bool:
  se = config.sample_eval
  if int(se.num) <= 0:
    return False
  every = int(se.every)
  return every <= 0 or step % every == 0 or step == int(config.total_steps)


class SampleEvaluator:
  """Built once per run (loads captions and the VQ decoder), called per eval."""

  def __init__(self, config, model, tokenizer):
    from vlgen_jax import runs
    from vlgen_jax.data import token_records
    from vlgen_jax.vq.api import VQTokenizer
    se = config.sample_eval
    if int(se.num) < 1 or int(se.batch_size) < 1:
      raise UserError("config.sample_eval.num and batch_size must be >= 1")
    data_dir = config.data.data_dir
    if config.data.source != "tokens" or not data_dir:
      raise UserError("config.sample_eval needs a token dataset (data.source=tokens); "
                      "set --config.sample_eval.num=0 to turn it off")
    source = token_records.TokenRecordSource(data_dir, str(se.split))
    self.captions = [caption for _, caption in
                     (token_records.decode_token_record(source[i])
                      for i in range(min(int(se.num), len(source))))]
    vq_workdir = se.vq_workdir or runs.recorded_vq_run(config)
    if not vq_workdir or not os.path.isdir(vq_workdir):
      raise UserError(f"config.sample_eval: VQ run {vq_workdir!r} of token dataset {data_dir} "
                      f"not found; set --config.sample_eval.vq_workdir")
    self.vq = VQTokenizer.from_workdir(vq_workdir)
    self.config, self.model, self.tokenizer = config, model, tokenizer
    from vlgen_jax.sample.sampler import SamplingOptions
    self.options = SamplingOptions.from_config(config)

  def __call__(self, params, step: int, writer) -> dict[str, float]:
    import jax
    from vlgen_jax.sample.generator import Generator
    from vlgen_jax.train import sharding
    shardings = jax.tree.map(lambda x: x.sharding, params)
    mesh = jax.tree.leaves(shardings)[0].mesh
    gen = Generator(run="", config=self.config, model=self.model, params=params,
                    tokenizer=self.tokenizer, vq=self.vq, mesh=mesh, param_shardings=shardings,
                    rules=sharding.logical_axis_rules(self.config), step=step)
    se = self.config.sample_eval
    images, _ = gen.generate(self.captions, self.options, seed=int(se.seed),
                             batch_size=int(se.batch_size))
    if jax.process_index() != 0:
      return {}
    return self._score_and_log(images, step, writer)

  def _score_and_log(self, images: np.ndarray, step: int, writer) -> dict[str, float]:
    from vlgen_jax.eval import report
    from vlgen_jax.images import save_png
    _, _, summaries, grid = report.score_images(list(self.config.evaluators), images,
                                                self.captions)
    out = {}
    for name, summary in summaries.items():
      out[f"sample/{name}_unscored"] = float(summary["unscored"])
      out.update({f"sample/{k}": float(v) for k, v in summary.items()
                  if k not in ("n", "unscored")})
    writer.image("sample/grid", grid, step)
    if getattr(writer, "workdir", None):
      os.makedirs(os.path.join(writer.workdir, "samples"), exist_ok=True)
      save_png(grid, os.path.join(writer.workdir, "samples", f"step_{step}.png"))
    return out
