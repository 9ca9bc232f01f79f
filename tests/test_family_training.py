"""Trainer guarantees hold for every model family (the same harness as
tests/test_model_sharding.py and tests/test_train_resume.py): sharded ==
unsharded, and a run stopped by SIGTERM resumes bit-identically (the masked
family draws its masks from the step rng, so they must resume too)."""
from __future__ import annotations

import jax
import numpy as np
import pytest

from trainer_helpers import REPO_ROOT, train_losses
from vlgen_jax.config import load_config
from vlgen_jax.train.checkpoint import load_params
from vlgen_jax.train.trainer import train

STEPS = 5
TINY = str(REPO_ROOT / "configs" / "t2i_tiny.py")
NEW_FAMILIES = ("masked", "decoder_only")


def _overrides(family, **extra):
  items = {"model.family": family, "model.decoder_layers": 1, "total_steps": STEPS,
           "checkpoint_every": 0, "eval_every": 0, "log_every": 1, **extra}
  return [f"--config.{k}={v}" for k, v in items.items()]


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_sharded_equals_single_device(family, tmp_path):
  single = train(load_config(TINY, _overrides(family)), str(tmp_path / "one"),
                 devices=jax.devices()[:1])
  mesh = {"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2}
  sharded = train(load_config(TINY, _overrides(family, **mesh)), str(tmp_path / "mesh"))
  ref, got = train_losses(tmp_path / "one"), train_losses(tmp_path / "mesh")
  assert sorted(ref) == sorted(got) == list(range(1, STEPS + 1))
  for step in ref:
    assert got[step] == pytest.approx(ref[step], rel=1e-4), step
  assert got[STEPS] < got[1]  # it trained
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4),
               jax.device_get(sharded.params), jax.device_get(single.params))


def test_masked_resume_is_bit_identical(tmp_path, capsys):
  # In this process: the trainer's SIGTERM stop and resume (a signal to a
  # separate `vlgen train` process: tests/test_train_resume.py).
  devices = jax.devices()[:4]
  run = _overrides("masked", total_steps=8, checkpoint_every=3,
                   **{"model.dropout": 0.1, "mesh.data": 2, "mesh.fsdp": 2})
  straight, stopped = tmp_path / "straight", tmp_path / "stopped"
  train(load_config(TINY, run), str(straight), devices=devices)
  train(load_config(TINY, [*run, "--config.debug.sigterm_after_step=4"]), str(stopped),
        devices=devices)
  assert "stopped by SIGTERM at step 4" in capsys.readouterr().err
  train(load_config(TINY, run), str(stopped), devices=devices)
  assert "resumed from step 4" in capsys.readouterr().err
  ref, resumed = train_losses(straight), train_losses(stopped)
  assert sorted(ref) == sorted(resumed) == list(range(1, 9))
  for step in ref:
    assert resumed[step] == ref[step], step  # bit-identical
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  jax.tree.map(np.testing.assert_array_equal, load_params(str(straight), None, one),
               load_params(str(stopped), None, one))
