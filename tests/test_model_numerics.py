"""Numerics options of the t2i model: remat policies, bf16 compute, dropout, and
masked (never predicted) vocabulary ids."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlgen_jax.config import load_config
from vlgen_jax.data.synthetic import SyntheticCaptions
from vlgen_jax.tasks.t2i import TextToImageTask


def _task(*overrides):
  return TextToImageTask(load_config("configs/t2i_tiny.py", list(overrides)))


@pytest.fixture(scope="module")
def setup():
  """One init shared by every test (params do not depend on the compute dtype)."""
  task = _task()
  batch = SyntheticCaptions.from_config(task.config).batch(0, seed=0, split="train", batch_size=8)
  params = nn.unbox(jax.jit(task.init)(jax.random.key(0), batch)[0])
  return task, batch, params


def _grad_fn(task):
  return lambda p, b: jax.grad(lambda q: task.loss(q, {}, b, jax.random.key(1), train=True)[0])(p)


def test_remat_changes_memory_not_numbers_and_masked_ids_get_no_gradient(setup):
  ref_task, batch, params = setup
  ref = jax.jit(_grad_fn(ref_task))(params, batch)
  assert "remat" not in str(jax.make_jaxpr(_grad_fn(ref_task))(params, batch))
  # "full" stands for the policies: they only change what jax.checkpoint saves.
  task = _task("--config.remat=full")
  jaxpr = str(jax.make_jaxpr(_grad_fn(task))(params, batch))
  assert "remat" in jaxpr or "checkpoint" in jaxpr
  grads = jax.jit(_grad_fn(task))(params, batch)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), grads, ref)

  # Output head (embed, 128 padded ids): codes 0..63 learn; BOS (64) and
  # padding are masked in the model, so the loss never reaches them.
  assert task.spec.image_bos_id == 64 and task.spec.image_vocab_padded == 128
  head = np.asarray(ref["decoder"]["logits"]["kernel"])
  assert np.all(head[:, 64:] == 0) and np.any(head[:, :64] != 0)


def test_bfloat16_compute_keeps_fp32_params_and_logits(setup):
  fp32, batch, params = setup
  bf16 = _task("--config.dtype=bfloat16")
  assert bf16.spec.compute_dtype() == jnp.bfloat16
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  forward = lambda task: jax.jit(  # noqa: E731
      lambda p: task.model.apply({"params": p}, batch["text_ids"], batch["image_tokens"]))
  low, high = forward(bf16)(params), forward(fp32)(params)
  assert low.dtype == jnp.float32
  k = fp32.spec.image_vocab_size
  err = np.max(np.abs(np.asarray(low[..., :k]) - np.asarray(high[..., :k])))
  assert 0 < err < 0.05 * np.max(np.abs(np.asarray(high[..., :k])))


def test_dropout_only_in_training(setup):
  _, batch, params = setup
  task = _task("--config.model.dropout=0.2", "--config.model.cond_dropout=0.0")
  loss = jax.jit(lambda p, r, train: task.loss(p, {}, batch, r, train=train)[0],
                 static_argnums=2)
  a, b = loss(params, jax.random.key(1), True), loss(params, jax.random.key(2), True)
  assert float(a) != float(b)
  assert float(loss(params, jax.random.key(1), True)) == float(a)  # seeded
  evals = {float(loss(params, jax.random.key(i), False)) for i in range(2)}
  assert len(evals) == 1 and float(a) not in evals


def test_unrolled_layers_compute_the_same_loss_and_gradients(setup):
  """`unroll_layers` only unrolls the scan: same params, same numbers, no loop."""
  ref_task, batch, params = setup
  task = _task("--config.model.unroll_layers=True")

  def scan_unrolls(t):  # (length, unroll) of every top-level scan in the gradient
    eqns = jax.make_jaxpr(_grad_fn(t))(params, batch).jaxpr.eqns
    return [(e.params["length"], e.params["unroll"]) for e in eqns if e.primitive.name == "scan"]

  assert scan_unrolls(ref_task) and all(u == 1 for _, u in scan_unrolls(ref_task))
  assert scan_unrolls(task) and all(u == n for n, u in scan_unrolls(task))
  abstract = lambda t: jax.tree.map(  # noqa: E731
      lambda x: x.shape, nn.unbox(jax.eval_shape(t.init, jax.random.key(0), batch)[0]))
  assert abstract(task) == abstract(ref_task)
  grads = jax.jit(_grad_fn(task))(params, batch)
  ref = jax.jit(_grad_fn(ref_task))(params, batch)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), grads, ref)


def test_relu2_mlp_is_squared_relu():
  from vlgen_jax.model.layers import MLP
  mlp = MLP(d_model=4, mlp_dim=8, kind="relu2")
  x = jax.random.normal(jax.random.key(0), (2, 3, 4))
  params = mlp.init(jax.random.key(1), x)["params"]
  wi, wo = nn.unbox(params)["wi"]["kernel"], nn.unbox(params)["wo"]["kernel"]
  expected = np.maximum(np.asarray(x) @ np.asarray(wi), 0) ** 2 @ np.asarray(wo)
  np.testing.assert_allclose(mlp.apply({"params": params}, x), expected, rtol=1e-5, atol=1e-6)
