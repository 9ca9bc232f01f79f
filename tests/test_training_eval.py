"""In-training sample evaluation of t2i runs (vlgen_jax/eval/training_eval.py)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from vlgen_jax import cli
from vlgen_jax.config import load_config
from vlgen_jax.errors import UserError
from vlgen_jax.eval import training_eval
from vlgen_jax.eval import report
from vlgen_jax.sample.sampler import SamplingOptions
from trainer_helpers import demo_t2i_args

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_sample_eval_logs_the_grid_and_fidelity_of_the_current_params(demo_tiny_dir, tmp_path):
  from vlgen_jax.sample.generator import Generator
  workdir = tmp_path / "t2i"
  assert cli.main(demo_t2i_args(demo_tiny_dir, workdir, "--config.total_steps=4",
                            "--config.eval_every=2", "--config.sample_eval.num=6",
                            "--config.sample_eval.batch_size=4")) == 0
  lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
  evals = {x["step"]: x for x in lines if "sample/fidelity" in x}
  assert sorted(evals) == [2, 4]
  for x in evals.values():
    assert x["sample/shapes_unscored"] == 0
    assert 0.0 <= x["sample/fidelity"] <= 1.0 and 0.0 <= x["sample/color"] <= 1.0
  events = b"".join(p.read_bytes() for p in (workdir / "tensorboard").iterdir())
  assert b"sample/grid" in events and b"sample/fidelity" in events

  # The step-4 grid is exactly what the exported params sample for the same
  # captions, options and seed: the evaluator used the live params.
  gen = Generator.load(str(workdir))
  config = gen.config
  evaluator = training_eval.SampleEvaluator(config, gen.model, gen.tokenizer)
  assert len(evaluator.captions) == 6 and all(evaluator.captions)
  images, _ = gen.generate(evaluator.captions, SamplingOptions.from_config(config),
                           seed=0, batch_size=4)
  _, _, summaries, grid = report.score_images(["shapes"], images, evaluator.captions)
  assert summaries["shapes"]["fidelity"] == pytest.approx(evals[4]["sample/fidelity"])
  saved = np.asarray(Image.open(workdir / "samples" / "step_4.png").convert("RGB"))
  np.testing.assert_array_equal(saved, grid)


def test_sample_eval_schedule_and_bad_setups(demo_tiny_dir, tmp_path):
  c = load_config(os.path.join(REPO_ROOT, "configs/t2i_tiny.py"),
                  ["--config.total_steps=10", "--config.sample_eval.every=4"])
  assert not training_eval.is_due(c, 4)  # num = 0: off by default
  with c.unlocked():
    c.sample_eval.num = 3
  assert [s for s in range(1, 11) if training_eval.is_due(c, s)] == [4, 8, 10]

  # Synthetic data has no VQ to draw with: one line, before any training.
  with pytest.raises(UserError, match="sample_eval needs a token dataset"):
    training_eval.SampleEvaluator(load_config(os.path.join(REPO_ROOT, "configs/t2i_tiny.py"),
                                              ["--config.sample_eval.num=2"]), None, None)
  with pytest.raises(UserError, match="VQ run .* not found"):
    c = load_config(os.path.join(REPO_ROOT, "configs/t2i_shapes.py"),
                    [f"--config.data.data_dir={demo_tiny_dir / 'tokens'}",
                     "--config.sample_eval.num=2",
                     f"--config.sample_eval.vq_workdir={tmp_path / 'nowhere'}"])
    training_eval.SampleEvaluator(c, None, None)


def test_unscored_captions_are_counted_and_framed_gray():
  images = np.zeros((2, 32, 32, 3), np.uint8)
  _, per_image, summaries, grid = report.score_images(
      ["shapes"], images, ["a photo of a cat", "a large red circle in the center"])
  assert per_image["shapes"][0] is None and summaries["shapes"]["n"] == 1
  assert summaries["shapes"]["unscored"] == 1
  s = summaries["shapes"]
  assert s["fidelity"] == 0.0 and s["count"] == 0.0  # blank image
  _, per_image, summaries, _ = report.score_images(["shapes"], images[:1], ["a photo of a cat"])
  assert per_image == {"shapes": [None]} and summaries == {}
  assert tuple(grid[0, 0]) == (128, 128, 128)  # the first cell's frame: not scored
  assert tuple(grid[0, 2 + 128 + 32 + 2]) == (220, 40, 40)  # the second: not satisfied


def test_sampling_options_come_from_the_config_unless_a_flag_is_given():
  c = load_config(os.path.join(REPO_ROOT, "configs/t2i_shapes.py"), [])
  options = SamplingOptions.from_config(c)
  assert (options.cfg_scale, options.temperature, options.top_k) == (1.0, 0.3, 16)
  assert options.plausibility == 0.3
  # The quick start's shortened schedule samples with guidance (its t2i overrides).
  from vlgen_jax.demo import _overrides
  demo = load_config(os.path.join(REPO_ROOT, "configs/demo_quickstart.py"), [])
  quick = load_config(os.path.join(REPO_ROOT, "configs/t2i_shapes.py"), _overrides(demo.t2i.overrides))
  assert (SamplingOptions.from_config(quick).cfg_scale, quick.total_steps) == (2.0, 6000)
  assert SamplingOptions.from_config(c, cfg_scale=2.0, top_k=None).cfg_scale == 2.0
  assert SamplingOptions.from_config(c, cfg_scale=2.0, top_k=None).top_k == 16
  with pytest.raises(UserError, match="top-p must be in"):
    SamplingOptions.from_config(c, top_p=0.0)
