"""Numerics options of the t2i model: remat policies, bf16 compute, dropout."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vlgen_jax.config import load_config
from vlgen_jax.model.synthetic import SyntheticCaptions
from vlgen_jax.model.task import TextToImageTask


def _task(*overrides):
  return TextToImageTask(load_config("configs/t2i_tiny.py", list(overrides)))


def _batch(task):
  return SyntheticCaptions.from_config(task.config).batch(0, seed=0, split="train", batch_size=8)


def _params(task, batch):
  return nn.unbox(jax.jit(task.init)(jax.random.key(0), batch)[0])


def _grad_fn(task):
  return lambda p, b: jax.grad(lambda q: task.loss(q, {}, b, jax.random.key(1), train=True)[0])(p)


def test_remat_policies_change_memory_not_numbers():
  ref_task = _task()
  batch = _batch(ref_task)
  params = _params(ref_task, batch)
  ref = jax.jit(_grad_fn(ref_task))(params, batch)
  assert "remat" not in str(jax.make_jaxpr(_grad_fn(ref_task))(params, batch))
  for policy in ("full",):  # the other policies only change what jax.checkpoint saves
    task = _task(f"--config.remat={policy}")
    jaxpr = str(jax.make_jaxpr(_grad_fn(task))(params, batch))
    assert "remat" in jaxpr or "checkpoint" in jaxpr, policy
    grads = jax.jit(_grad_fn(task))(params, batch)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), grads, ref)


def test_bfloat16_compute_keeps_fp32_params_and_logits():
  fp32, bf16 = _task("--config.dtype=float32"), _task("--config.dtype=bfloat16")
  batch = _batch(fp32)
  params = _params(bf16, batch)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  forward = lambda task: jax.jit(  # noqa: E731
      lambda p: task.model.apply({"params": p}, batch["text_ids"], batch["image_tokens"]))
  low, high = forward(bf16)(params), forward(fp32)(params)
  assert low.dtype == jnp.float32
  k = fp32.spec.image_vocab_size
  err = np.max(np.abs(np.asarray(low[..., :k]) - np.asarray(high[..., :k])))
  assert 0 < err < 0.05 * np.max(np.abs(np.asarray(high[..., :k])))


def test_dropout_only_in_training():
  task = _task("--config.model.dropout=0.2", "--config.model.cond_dropout=0.0")
  batch = _batch(task)
  params = _params(task, batch)
  loss = jax.jit(lambda p, r, train: task.loss(p, {}, batch, r, train=train)[0],
                 static_argnums=2)
  a, b = loss(params, jax.random.key(1), True), loss(params, jax.random.key(2), True)
  assert float(a) != float(b)
  assert float(loss(params, jax.random.key(1), True)) == float(a)  # seeded
  evals = {float(loss(params, jax.random.key(i), False)) for i in range(2)}
  assert len(evals) == 1 and float(a) not in evals
