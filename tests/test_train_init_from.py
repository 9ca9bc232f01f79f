"""`--config.init_from=RUN[:STEP]`: fine-tuning starts from another run's
params (new optimizer state, data iterator and step) and trains on new data."""
import jax
import numpy as np
import pytest

from trainer_helpers import REPO_ROOT, train_losses
from vlgen_jax.config import load_config
from vlgen_jax.errors import UserError
from vlgen_jax.tasks import build_task
from vlgen_jax.train import checkpoint, trainer

T2I_TINY = str(REPO_ROOT / "configs" / "t2i_tiny.py")


def _config(**overrides):
  # No dropout of any kind: the first training step's loss is then the
  # eval-mode loss of the starting params on that batch.
  base = {"model.d_model": 32, "model.mlp_dim": 64, "model.decoder_layers": 1,
          "model.dropout": 0.0, "model.cond_dropout": 0.0, "batch_size": 16,
          "eval_every": 0, "log_every": 1, "checkpoint_every": 10, "total_steps": 20,
          "optimizer.warmup_steps": 2}
  items = {**base, **overrides}
  return load_config(T2I_TINY, [f"--config.{k}={v}" for k, v in items.items()])


def _train(config, workdir):
  # One device: the fine-tuning logic does not depend on the mesh, and a
  # one-device program compiles several times faster on a busy CPU.
  return trainer.train(config, str(workdir), devices=jax.devices()[:1])


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("init_from_a")
  _train(_config(), workdir)
  return workdir


def test_init_from_starts_from_trained_params_and_learns_new_data(trained_run, tmp_path):
  # The new data: the same caption grammar, another caption -> tokens table.
  # RUN:STEP: checkpoint 10 of the trained run (its export is step 20).
  new = {"data.synthetic.table_seed": 99, "seed": 7, "total_steps": 40}
  config = _config(**new, init_from=f"{trained_run}:10")
  _train(config, tmp_path)
  losses = train_losses(tmp_path)

  # The trained run's eval loss on the fine-tuning run's first batch.
  task = build_task(_config(**new))
  batch = next(task.input_iterator(config.train_split, batch_size=16, train=True, seed=7,
                                   process_index=0, process_count=1))
  params = checkpoint.load_params(trained_run, 10)
  model_state = {}
  loss, _ = task.loss(params, model_state, jax.tree.map(np.asarray, batch),
                      jax.random.PRNGKey(0), train=False)
  assert losses[1] == pytest.approx(float(loss), rel=1e-4)
  # A fresh model starts near log(64) = 4.16; the trained params start elsewhere.
  fresh = _config(**new)
  assert abs(losses[1] - np.log(fresh.model.image_vocab_size)) > 0.05
  # Step 1 is a new run's first step (step 0 + 1: nothing of the trained
  # run's step or schedule), and it learns the new mapping: its eval loss on
  # held-out batches of the new data falls below the starting params'.
  assert sorted(losses) == list(range(1, 41))

  def eval_loss(p):
    it = task.input_iterator("validation", batch_size=64, train=False, seed=7,
                             process_index=0, process_count=1)
    return np.mean([float(task.loss(p, model_state, jax.tree.map(np.asarray, next(it)),
                                    jax.random.PRNGKey(0), train=False)[0]) for _ in range(4)])

  assert eval_loss(checkpoint.load_params(tmp_path)) < eval_loss(params) - 0.05
  assert checkpoint.export_step(tmp_path) == 40


def test_init_from_errors_before_compiling(trained_run, tmp_path):
  with pytest.raises(UserError, match=r"no checkpoint for step 7"):
    _train(_config(init_from=f"{trained_run}:7"), tmp_path / "bad_step")
  with pytest.raises(UserError, match=r"does not fit this config's model: \S+ has shape"):
    _train(_config(**{"model.mlp_dim": 96}, init_from=str(trained_run)), tmp_path / "bad_shape")
  with pytest.raises(UserError, match=r"no trained run"):
    _train(_config(init_from=str(tmp_path / "nowhere")), tmp_path / "missing")
