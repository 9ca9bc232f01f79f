"""The decoder reads the caption: t2i_tiny, trained by the trainer, learns a
caption -> tokens function that a text-blind model cannot.

Synthetic data (vlgen_jax/data/synthetic.py): the image tokens are a fixed
function of the caption's words, so with the text the task is solvable
exactly; without it even the Bayes-optimal predictor cannot guess the first
token of each word's band (~1/32), so token accuracy stays far below 99% and
almost no sequence is reproduced.
"""
from __future__ import annotations

import jax
import numpy as np
import pytest

from trainer_helpers import read_metrics
from vlgen_jax.config import load_config
from vlgen_jax.data.synthetic import SyntheticCaptions
from vlgen_jax.tasks.t2i import TextToImageTask
from vlgen_jax.sample.sampler import SamplingOptions, make_sampler
from vlgen_jax.train.trainer import train


def _run(workdir, cond_dropout: float):
  """t2i_tiny for its 200 steps on one device, at half its batch (the step is
  most of this file's time, and 200 x 32 examples already learn the mapping);
  returns (task, params, eval metrics)."""
  config = load_config("configs/t2i_tiny.py", [
      f"--config.model.cond_dropout={cond_dropout}", "--config.checkpoint_every=0",
      "--config.batch_size=32",
      "--config.eval_every=200", "--config.eval_steps=2", "--config.log_every=50"])
  state = train(config, str(workdir), devices=jax.devices()[:1])
  evals = [m for m in read_metrics(workdir) if "eval/accuracy" in m]
  return TextToImageTask(config), jax.device_get(state.params), evals[-1]


@pytest.fixture(scope="module")
def conditioned(tmp_path_factory):
  return _run(tmp_path_factory.mktemp("t2i_text"), cond_dropout=0.1)  # the default


@pytest.fixture(scope="module")
def text_blind(tmp_path_factory):
  return _run(tmp_path_factory.mktemp("t2i_blind"), cond_dropout=1.0)  # every caption empty


def _evaluate(task, params, *, blank_text: bool = False):
  """Teacher-forced token accuracy and greedy exact-match rate on 256 validation examples."""
  data = SyntheticCaptions.from_config(task.config)
  batch = data.batch(0, seed=1, split="validation", batch_size=256)
  if blank_text:
    batch["text_ids"] = np.broadcast_to(task.empty_caption, batch["text_ids"].shape).copy()
  _, (metrics, _) = jax.jit(lambda p, b: task.loss(p, {}, b, None, train=False))(params, batch)
  greedy = make_sampler(task.model, SamplingOptions(temperature=0.0))
  tokens = np.asarray(greedy(params, batch["text_ids"], jax.random.split(jax.random.key(0), 256)))
  exact = float(np.mean(np.all(tokens == batch["image_tokens"], axis=1)))
  return float(metrics["accuracy"]), exact


def test_text_conditioned_model_reproduces_images(conditioned):
  task, params, last_eval = conditioned
  assert last_eval["step"] == 200 and last_eval["eval/accuracy"] >= 0.99, last_eval
  accuracy, exact = _evaluate(task, params)
  assert accuracy >= 0.99, accuracy
  assert exact >= 0.95, exact
  # Asked with blank captions (10% of its training captions were), the same
  # model falls back to the unconditional distribution.
  blank_accuracy, blank_exact = _evaluate(task, params, blank_text=True)
  assert blank_accuracy < 0.9 and blank_exact < 0.05, (blank_accuracy, blank_exact)


def test_text_blind_model_cannot(text_blind):
  task, params, last_eval = text_blind
  assert last_eval["eval/accuracy"] < 0.9, last_eval
  accuracy, exact = _evaluate(task, params)  # real captions: it never learned to read them
  assert accuracy < 0.9, accuracy
  assert exact < 0.05, exact
