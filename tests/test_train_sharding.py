"""Sharded training equals single-device training; shardings follow the rules;
gradient accumulation equals the full batch; remat does not change numbers."""
from __future__ import annotations

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from trainer_helpers import toy_config, train_losses
from vlgen_jax.train import sharding as shd
from vlgen_jax.train.trainer import train

STEPS = 20
MESHES = {
    "data8": {"mesh.data": 8},
    "data2_fsdp4": {"mesh.data": 2, "mesh.fsdp": 4},
    "data2_fsdp2_tensor2": {"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2},
}

# What DEFAULT_LOGICAL_AXIS_RULES make of the toy model's logical names
# (vocab->tensor, embed->fsdp, heads->tensor, mlp->tensor, kv/norm->None).
EXPECTED_SPECS = {
    "embedding": P("tensor", "fsdp"),               # (vocab, embed)
    "position_embedding": P(None, "fsdp"),          # (None, embed)
    "head": P("fsdp", "tensor"),                    # (embed, vocab)
    "block_0/query": P("fsdp", "tensor", None),     # (embed, heads, kv)
    "block_0/attention_out": P("tensor", None, "fsdp"),  # (heads, kv, embed)
    "block_0/mlp_in": P("fsdp", "tensor"),          # (embed, mlp)
    "block_0/mlp_out": P("tensor", "fsdp"),         # (mlp, embed)
    "block_0/mlp_norm/scale": P(None),              # (norm,)
}


def _leaf(tree, path):
  for part in path.split("/"):
    tree = tree[part]
  return tree


def _expected_shard_shape(shape, spec, mesh_shape):
  out = []
  for dim, axis in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    out.append(dim // mesh_shape[axis] if axis else dim)
  return tuple(out)


@pytest.fixture(scope="module")
def single_device_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("single")
  config = toy_config(total_steps=STEPS, checkpoint_every=0)
  state = train(config, str(workdir), devices=jax.devices()[:1])
  return train_losses(workdir), jax.device_get(state.params)


@pytest.mark.parametrize("name", list(MESHES))
def test_mesh_matches_single_device_and_rules(name, single_device_run, tmp_path):
  ref_losses, ref_params = single_device_run
  config = toy_config({**MESHES[name], "total_steps": STEPS, "checkpoint_every": 0})
  state = train(config, str(tmp_path))
  losses = train_losses(tmp_path)
  assert sorted(losses) == list(range(1, STEPS + 1)) == sorted(ref_losses)
  for step in losses:
    assert losses[step] == pytest.approx(ref_losses[step], rel=1e-4), step
  # Training did something: the loss moved.
  assert losses[STEPS] < losses[1] - 0.05
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4),
               jax.device_get(state.params), ref_params)

  mesh_shape = {"data": 1, "fsdp": 1, "tensor": 1}
  mesh_shape.update({k.split(".")[1]: v for k, v in MESHES[name].items()})
  adam = state.opt_state[1][0]  # chain(clip, adamw) -> adamw's ScaleByAdamState
  for path, spec in EXPECTED_SPECS.items():
    for tree in (state.params, adam.mu, adam.nu):
      leaf = _leaf(tree, path)
      assert leaf.sharding.spec == spec, (path, leaf.sharding.spec)
      want = _expected_shard_shape(leaf.shape, spec, mesh_shape)
      assert set(shd.shard_shapes(leaf)) == {want}, (path, shd.shard_shapes(leaf), want)
  counts = state.model_state["token_counts"]  # (vocab,) -> tensor
  assert counts.sharding.spec == P("tensor")
  assert set(shd.shard_shapes(counts)) == {(32 // mesh_shape["tensor"],)}
  assert float(counts.sum()) == STEPS * 16 * 8  # steps * batch * predicted tokens
  assert state.step.sharding.is_fully_replicated


def test_gradient_accumulation_matches_full_batch(tmp_path):
  # The accumulated run also rematerialises ("dots"), which must not change
  # the numbers either.
  mesh = {"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2}
  common = {**mesh, "total_steps": 2, "checkpoint_every": 0}
  full = train(toy_config(common), str(tmp_path / "full"))
  accumulated = train(toy_config({**common, "micro_batches": 4, "remat": "dots"}),
                      str(tmp_path / "acc"))
  full_losses, acc_losses = train_losses(tmp_path / "full"), train_losses(tmp_path / "acc")
  assert sorted(full_losses) == sorted(acc_losses) == [1, 2]
  for step in full_losses:
    assert acc_losses[step] == pytest.approx(full_losses[step], rel=1e-5), step
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               jax.device_get(accumulated.params), jax.device_get(full.params))
  # Model state threads through the micro-batches: same token counts.
  np.testing.assert_array_equal(jax.device_get(accumulated.model_state["token_counts"]),
                                jax.device_get(full.model_state["token_counts"]))


@pytest.mark.parametrize("policy,remat_in_jaxpr", [("none", False), ("full", True),
                                                   ("dots", True), ("dots_no_batch", True)])
def test_remat_policy_wraps_the_loss(policy, remat_in_jaxpr):
  import jax.numpy as jnp
  from vlgen_jax.train.numerics import maybe_remat

  def loss(w, x):
    return jnp.sum(jnp.tanh(x @ w) ** 2)

  w, x = jnp.ones((4, 3)) * 0.1, jnp.arange(8.0).reshape(2, 4)
  fn = maybe_remat(loss, policy)
  jaxpr = str(jax.make_jaxpr(jax.grad(fn))(w, x))
  assert ("remat" in jaxpr or "checkpoint" in jaxpr) == remat_in_jaxpr
  np.testing.assert_allclose(jax.grad(fn)(w, x), jax.grad(loss)(w, x), rtol=1e-6)
