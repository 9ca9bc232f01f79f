"""The smallest trainer config: the `toy` task (vlgen_jax/tasks/toy.py), a tiny
causal transformer on synthetic sequences. Trains in seconds on CPU; tests
use it to check sharding, accumulation, checkpoints and multi-host runs.

  vlgen train --config configs/toy.py --workdir /tmp/toy --config.total_steps=200
"""
import ml_collections

from vlgen_jax.data.pipeline import default_data_config
from vlgen_jax.train.defaults import trainer_config


def get_config():
  c = trainer_config()
  c.task = "toy"
  c.total_steps = 200
  c.log_every = 20
  c.eval_every = 100
  c.eval_steps = 2
  c.checkpoint_every = 100
  c.batch_size = 16
  c.optimizer.learning_rate = 1e-2
  c.optimizer.warmup_steps = 10
  c.model = ml_collections.ConfigDict({
      "vocab_size": 32,
      "embed_dim": 16,
      "num_heads": 4,
      "head_dim": 4,
      "mlp_dim": 32,
      "num_layers": 2,
      "seq_len": 8,
      "dropout": 0.0,
  })
  # Synthetic sequences by default; `dir`: a directory with <split>.npy token
  # arrays; `source=tar|folder` + `data_dir`: images through the input
  # pipeline as pixel sequences (all pipeline fields: vlgen_jax/data/pipeline.py).
  c.data = default_data_config()
  c.data.source = "synthetic"
  c.data.dir = ""
  c.data.resolution = 3  # 3 x 3 = seq_len + 1 pixels per image
  c.data.read_threads = 1
  return c
