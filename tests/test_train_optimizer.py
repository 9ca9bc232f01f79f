"""Optimizers from the config: schedules, weight-decay mask, clipping,
Adafactor state sharding, and per-label optimizers (optax.multi_transform)."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from trainer_helpers import toy_config, train_losses, read_metrics
from vlgen_jax.train import checkpoint as ckpt_lib
from vlgen_jax.train import sharding as shd
from vlgen_jax.train.defaults import trainer_config
from vlgen_jax.train.optimizer import decay_mask, learning_rate_schedule, make_optimizer
from vlgen_jax.train.trainer import train


def _opt(**kw):
  opt = trainer_config().optimizer
  for k, v in kw.items():
    opt[k] = v
  return opt


def test_warmup_then_cosine_linear_constant():
  peak, end = 1.0, 0.1
  cos = learning_rate_schedule(_opt(learning_rate=peak, warmup_steps=4, end_lr_ratio=end), 24)
  # Warmup is nonzero from the first update and reaches the peak after 4.
  np.testing.assert_allclose([cos(i) for i in range(5)], [0.25, 0.5, 0.75, 1.0, 1.0], rtol=1e-6)
  np.testing.assert_allclose(cos(14), end + (peak - end) * 0.5 * (1 + math.cos(math.pi * 0.5)),
                             rtol=1e-6)
  np.testing.assert_allclose([cos(24), cos(100)], [end, end], rtol=1e-6)
  lin = learning_rate_schedule(_opt(learning_rate=2.0, schedule="linear", end_lr_ratio=0.0), 10)
  np.testing.assert_allclose([lin(0), lin(5), lin(10)], [2.0, 1.0, 0.0], atol=1e-6)
  const = learning_rate_schedule(_opt(learning_rate=3.0, schedule="constant", warmup_steps=2), 10)
  np.testing.assert_allclose([const(0), const(1), const(2), const(9)], [1.5, 3.0, 3.0, 3.0])


def test_decay_mask_excludes_norms_biases_embeddings():
  params = {"embedding": jnp.ones(3), "block": {"mlp_in": jnp.ones((2, 2)), "bias": jnp.ones(2),
                                                "attention_norm": {"scale": jnp.ones(2)}}}
  mask = decay_mask(params, ("norm", "bias", "embedding", "scale"))
  assert mask == {"embedding": False, "block": {"mlp_in": True, "bias": False,
                                                "attention_norm": {"scale": False}}}
  # AdamW with zero gradients: only the masked-in leaf decays.
  config = trainer_config()
  config.optimizer.update(learning_rate=0.1, weight_decay=0.5, grad_clip_norm=0.0,
                          schedule="constant")
  tx, _ = make_optimizer(config)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  np.testing.assert_allclose(updates["block"]["mlp_in"], -0.05 * np.ones((2, 2)), rtol=1e-6)
  for leaf in (updates["embedding"], updates["block"]["bias"],
               updates["block"]["attention_norm"]["scale"]):
    np.testing.assert_array_equal(leaf, 0.0)


def test_global_norm_clipping():
  config = trainer_config()
  config.optimizer.update(name="sgd", b1=0.0, learning_rate=1.0, schedule="constant",
                          grad_clip_norm=2.0)
  tx, _ = make_optimizer(config)
  params = {"a": jnp.zeros(3), "b": jnp.zeros(4)}
  grads = {"a": jnp.full(3, 100.0), "b": jnp.full(4, -50.0)}
  updates, _ = tx.update(grads, tx.init(params), params)
  assert float(optax.global_norm(updates)) == pytest.approx(2.0, rel=1e-6)
  # Direction kept: updates are -grads scaled by one factor.
  ratio = np.concatenate([updates["a"] / -grads["a"], updates["b"] / -grads["b"]])
  np.testing.assert_allclose(ratio, ratio[0], rtol=1e-6)


def test_adafactor_factored_state_is_replicated_and_moments_mirror_params():
  mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)
  params = {"big": jax.ShapeDtypeStruct((256, 128), jnp.float32),
            "small": jax.ShapeDtypeStruct((16,), jnp.float32)}
  param_shardings = {"big": jax.sharding.NamedSharding(mesh, P("fsdp", "tensor")),
                     "small": jax.sharding.NamedSharding(mesh, P())}
  for name in ("adafactor", "adamw"):
    config = trainer_config()
    config.optimizer.name = name
    tx, _ = make_optimizer(config)
    opt_state = jax.eval_shape(tx.init, params)
    shardings = shd.mirror_shardings(opt_state, params, param_shardings, mesh)
    flat = jax.tree_util.tree_flatten_with_path(opt_state)[0]
    for (path, leaf), sharding in zip(flat, jax.tree.leaves(shardings)):
      if leaf.shape == (256, 128):
        assert sharding.spec == P("fsdp", "tensor"), path
      else:
        assert sharding.spec in (P(), P(None)), (path, leaf.shape, sharding.spec)
    if name == "adafactor":  # the factored row/column statistics exist and are small
      assert {(256,), (128,)} <= {leaf.shape for _, leaf in flat}


def test_adafactor_trains_sharded(tmp_path):
  config = toy_config({"optimizer.name": "adafactor", "optimizer.learning_rate": 0.03,
                       "total_steps": 4, "checkpoint_every": 0,
                       "mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2})
  train(config, str(tmp_path))
  losses = train_losses(tmp_path)
  assert sorted(losses) == [1, 2, 3, 4] and all(np.isfinite(list(losses.values())))
  assert losses[4] < losses[1]


def test_per_label_optimizers(tmp_path):
  """Toy labels embeddings vs body: frozen embeddings (SGD, lr 0) stay put
  while the body trains with AdamW."""
  config = toy_config(total_steps=3, checkpoint_every=1)
  with config.unlocked():
    config.optimizers = ml_collections.ConfigDict({
        "embeddings": {"name": "sgd", "learning_rate": 0.0, "b1": 0.0},
        "body": {"learning_rate": 0.01, "schedule": "constant", "warmup_steps": 0}})
  train(config, str(tmp_path), devices=jax.devices()[:1])
  first, last = (ckpt_lib.load_params(str(tmp_path), s) for s in (1, 3))
  for name in ("embedding", "position_embedding"):
    np.testing.assert_array_equal(first[name], last[name])
  assert not np.allclose(first["head"], last["head"])
  logged = [m for m in read_metrics(tmp_path) if "train/loss" in m][-1]
  assert logged["train/learning_rate/embeddings"] == 0.0
  assert logged["train/learning_rate/body"] == pytest.approx(0.01)


@pytest.mark.parametrize("with_labels", [False, True])
def test_frozen_leaves_never_move_and_take_no_part_in_clipping(with_labels):
  config = trainer_config()
  config.optimizer.update(learning_rate=0.1, weight_decay=0.5, grad_clip_norm=1.0,
                          schedule="constant", warmup_steps=0)
  params = {"const": jnp.ones(4), "w": jnp.ones(3)}
  frozen = {"const": True, "w": False}
  labels = None
  if with_labels:
    with config.unlocked():
      config.optimizers = ml_collections.ConfigDict({"body": {"name": "sgd", "b1": 0.0}})
    labels = {"const": "body", "w": "body"}
  tx, schedules = make_optimizer(config, labels, frozen)
  assert list(schedules) == (["body"] if with_labels else [""])
  state = tx.init(params)
  # Only the trained leaf has optimizer state (AdamW moments / nothing for SGD).
  sizes = {x.size for x in jax.tree.leaves(state) if hasattr(x, "size") and x.ndim}
  assert 4 not in sizes
  grads = {"const": jnp.full(4, 1e6), "w": jnp.full(3, 0.1)}
  updates, _ = tx.update(grads, state, params)
  np.testing.assert_array_equal(updates["const"], 0.0)
  # The huge frozen gradient does not count in the global norm (0.17 < 1: no clipping).
  ref_tx, _ = make_optimizer(config, None if not with_labels else {"w": "body"})
  ref, _ = ref_tx.update({"w": grads["w"]}, ref_tx.init({"w": params["w"]}), {"w": params["w"]})
  np.testing.assert_allclose(updates["w"], ref["w"], rtol=1e-6)
  assert float(jnp.abs(updates["w"]).max()) > 0
