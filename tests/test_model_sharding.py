"""t2i_tiny trains under the trainer's meshes with the same losses as on one
device, and the tensor axis really splits attention heads, MLP and vocab."""
from __future__ import annotations

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from trainer_helpers import train_losses
from vlgen_jax.config import load_config
from vlgen_jax.train import sharding as shd
from vlgen_jax.train.trainer import train

STEPS = 6
MESHES = {
    "data8": {"data": 8, "fsdp": 1, "tensor": 1},
    "data2_fsdp2_tensor2": {"data": 2, "fsdp": 2, "tensor": 2},
}
# Param path -> spec under DEFAULT_LOGICAL_AXIS_RULES (layers/kv/norm replicated,
# embed -> fsdp, heads/mlp/vocab -> tensor). Scanned layers lead with "layers".
EXPECTED_SPECS = {
    "decoder/layers/self_attention/query/kernel": P(None, "fsdp", "tensor", None),
    "decoder/layers/self_attention/out/kernel": P(None, "tensor", None, "fsdp"),
    "decoder/layers/cross_attention/key/kernel": P(None, "fsdp", "tensor", None),
    "decoder/layers/mlp/wi/kernel": P(None, "fsdp", "tensor"),
    "decoder/layers/mlp/wo/kernel": P(None, "tensor", "fsdp"),
    "decoder/layers/pre_mlp_norm/scale": P(None, None),
    "decoder/token_embed/embedding": P("tensor", "fsdp"),
    "decoder/logits/kernel": P("fsdp", "tensor"),
    "encoder/layers/self_attention/value/kernel": P(None, "fsdp", "tensor", None),
    "encoder/token_embed/embedding": P("tensor", "fsdp"),
}


def _config(mesh: dict):
  overrides = [f"--config.mesh.{k}={v}" for k, v in mesh.items()]
  overrides += [f"--config.total_steps={STEPS}", "--config.checkpoint_every=0",
                "--config.eval_every=0", "--config.log_every=1"]
  return load_config("configs/t2i_tiny.py", overrides)


def _leaf(tree, path):
  for part in path.split("/"):
    tree = tree[part]
  return tree


@pytest.fixture(scope="module")
def single_device_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("t2i_single")
  state = train(_config({"data": 1}), str(workdir), devices=jax.devices()[:1])
  return train_losses(workdir), jax.device_get(state.params)


@pytest.mark.parametrize("name", list(MESHES))
def test_t2i_mesh_matches_single_device(name, single_device_run, tmp_path):
  ref_losses, ref_params = single_device_run
  mesh = MESHES[name]
  state = train(_config(mesh), str(tmp_path))
  losses = train_losses(tmp_path)
  assert sorted(losses) == sorted(ref_losses) == list(range(1, STEPS + 1))
  for step in losses:
    assert losses[step] == pytest.approx(ref_losses[step], rel=1e-4), step
  assert losses[STEPS] < losses[1] - 0.1  # it trained
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4),
               jax.device_get(state.params), ref_params)

  adam = state.opt_state[1][0]  # chain(clip, adamw) -> ScaleByAdamState
  for path, spec in EXPECTED_SPECS.items():
    for tree in (state.params, adam.mu):
      leaf = _leaf(tree, path)
      assert leaf.sharding.spec == spec, (path, leaf.sharding.spec)
      want = tuple(d // (mesh[a] if a else 1)
                   for d, a in zip(leaf.shape, tuple(spec) + (None,) * leaf.ndim))
      assert set(shd.shard_shapes(leaf)) == {want}, (path, shd.shard_shapes(leaf), want)
  if mesh["tensor"] == 2:
    # 4 heads and 128 MLP units: each device holds 2 heads and 64 units of every layer.
    q = _leaf(state.params, "decoder/layers/self_attention/query/kernel")
    assert set(shd.shard_shapes(q)) == {(2, 32, 2, 16)}
    wi = _leaf(state.params, "decoder/layers/mlp/wi/kernel")
    assert set(shd.shard_shapes(wi)) == {(2, 32, 64)}
    _check_activation_shardings(_config(mesh), state.params)


def _strip(spec: P) -> tuple:
  spec = tuple(spec)
  while spec and spec[-1] is None:
    spec = spec[:-1]
  return spec


def _check_activation_shardings(config, params):
  """Activation constraints under the mesh: queries split by heads and logits
  by vocab over tensor, the batch over data x fsdp."""
  from vlgen_jax.model.attention import Attention
  from vlgen_jax.train import mesh as mesh_lib
  from vlgen_jax.tasks import build_task

  task = build_task(config)
  mesh = mesh_lib.create_mesh(config)
  text = np.full((8, 8), 2, np.int32)
  tokens = np.zeros((8, 16), np.int32)
  layer0 = jax.tree.map(lambda a: a[0], params["decoder"]["layers"])
  x = np.ones((8, 16, 64), np.float32)

  with shd.mesh_context(mesh, shd.logical_axis_rules(config)):
    logits = jax.jit(lambda p: task.model.apply({"params": p}, text, tokens))(params)
    queries = jax.jit(lambda p: Attention(task.spec).apply(
        {"params": p}, x, method=Attention.queries))(layer0["self_attention"])
  batch = ("data", "fsdp")
  assert _strip(logits.sharding.spec) == (batch, None, "tensor")
  assert set(shd.shard_shapes(logits)) == {(2, 16, 64)}      # 128 padded codes / 2
  assert _strip(queries.sharding.spec) == (batch, None, "tensor")
  assert set(shd.shard_shapes(queries)) == {(2, 16, 2, 16)}  # 4 heads / 2
