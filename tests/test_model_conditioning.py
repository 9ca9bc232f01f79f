"""The decoder reads the caption: t2i_tiny learns a caption -> tokens function.

Synthetic data (vlgen_jax/model/synthetic.py): the image tokens are a fixed
function of the caption's words, so with the text the task is solvable
exactly; with the text blanked even the Bayes-optimal predictor cannot guess
the first token of each word's band (~1/32), so token accuracy stays far
below 99% and almost no sequence is reproduced.
"""
import functools

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest

from vlgen_jax.config import load_config
from vlgen_jax.model.generate import generate
from vlgen_jax.model.synthetic import SyntheticCaptions
from vlgen_jax.model.task import TextToImageTask

def _train(task: TextToImageTask, *, blank_text: bool):
  """A plain optax loop over the task's loss (condition dropout on)."""
  config = task.config
  it = task.input_iterator("train", batch_size=config.batch_size, train=True, seed=0,
                           process_index=0, process_count=1)
  batch = next(it)
  params = nn.unbox(jax.jit(task.init)(jax.random.key(0), batch)[0])
  steps = config.total_steps
  schedule = optax.warmup_cosine_decay_schedule(0.0, config.optimizer.learning_rate,
                                                config.optimizer.warmup_steps, steps)
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, b1=0.9, b2=0.95))
  opt_state = tx.init(params)
  empty = np.broadcast_to(task.empty_caption, batch["text_ids"].shape)

  @jax.jit
  def step(params, opt_state, batch, rng):
    grad_fn = jax.grad(lambda p: task.loss(p, {}, batch, rng, train=True)[0])
    updates, opt_state = tx.update(grad_fn(params), opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  for i in range(steps):
    if blank_text:
      batch = dict(batch, text_ids=empty)
    params, opt_state = step(params, opt_state, batch, jax.random.key(i))
    batch = next(it)
  return params


@functools.lru_cache(maxsize=None)
def _trained(blank_text: bool):
  task = TextToImageTask(load_config("configs/t2i_tiny.py"))
  return task, _train(task, blank_text=blank_text)


def _evaluate(task, params, *, blank_text: bool = False):
  data = SyntheticCaptions.from_config(task.config)
  batch = data.batch(0, seed=1, split="validation", batch_size=256)
  if blank_text:
    batch["text_ids"] = np.broadcast_to(task.empty_caption, batch["text_ids"].shape).copy()
  _, (metrics, _) = jax.jit(lambda p, b: task.loss(p, {}, b, None, train=False))(params, batch)
  tokens = np.asarray(jax.jit(functools.partial(generate, task.model))(params, batch["text_ids"]))
  exact = float(np.mean(np.all(tokens == batch["image_tokens"], axis=1)))
  return float(metrics["accuracy"]), exact


def test_text_conditioned_model_reproduces_images():
  task, params = _trained(blank_text=False)
  accuracy, exact = _evaluate(task, params)
  assert accuracy >= 0.99, accuracy
  assert exact >= 0.95, exact
  # The same model, asked with blank captions (it saw 10% of them in
  # training), falls back to the unconditional distribution.
  blank_accuracy, blank_exact = _evaluate(task, params, blank_text=True)
  assert blank_accuracy < 0.9 and blank_exact < 0.05, (blank_accuracy, blank_exact)


def test_blank_text_model_cannot():
  task, params = _trained(blank_text=True)
  accuracy, exact = _evaluate(task, params, blank_text=True)
  assert accuracy < 0.9, accuracy
  assert exact < 0.05, exact
