"""Defaults shared by the t2i configs (configs/t2i_*.py, configs/parti_*.py)."""
from __future__ import annotations

import ml_collections

from vlgen_jax.model import synthetic
from vlgen_jax.train.defaults import trainer_config


def model_config(**overrides) -> ml_collections.ConfigDict:
  """`config.model` fields of the text-to-image model (see vlgen_jax/model/spec.py)."""
  m = ml_collections.ConfigDict({
      # Vocabularies and sequence shapes.
      "text_vocab_size": 16384,   # SentencePiece pieces; padded to a multiple of 128 inside.
      "text_length": 128,         # text ids per caption (BOS .. EOS, then pad).
      "text_pad_id": 0,
      "image_vocab_size": 8192,   # VQ codes; BOS = this id; padded to a multiple of 128.
      "image_grid": (32, 32),     # VQ tokens per image (rows, cols).
      # Transformer.
      "d_model": 1024,
      "num_heads": 16,
      "head_dim": 0,              # 0 = d_model // num_heads
      "mlp_dim": 4096,
      "encoder_layers": 12,
      "decoder_layers": 12,
      "norm": "rmsnorm",          # rmsnorm | layernorm
      "mlp": "gelu",              # gelu | swiglu
      "image_positions": "learned_2d",  # learned_2d | rope_2d
      "text_positions": "learned",      # learned | rope
      "rope_theta": 10_000.0,
      "qk_norm": False,
      "dropout": 0.0,
      "norm_eps": 1e-6,
      "attention_impl": "xla",    # xla | cudnn (flash attention on NVIDIA GPUs)
      # Loss.
      "z_loss": 1e-4,             # coefficient of mean(logsumexp^2)
      "cond_dropout": 0.1,        # fraction of captions replaced by the empty caption
  })
  m.update(overrides)
  return m


def data_config(**overrides) -> ml_collections.ConfigDict:
  d = ml_collections.ConfigDict({
      "source": "synthetic",      # synthetic | tokens
      # Ids of the empty caption (then text_pad_id), used by condition dropout
      # and classifier-free guidance. Synthetic data: BOS=1, EOS=2.
      "empty_caption": synthetic.EMPTY_CAPTION,
      "synthetic": synthetic.default_config(),
  })
  d.update(overrides)
  return d


def t2i_config() -> ml_collections.ConfigDict:
  c = trainer_config()
  c.task = "t2i"
  c.model = model_config()
  c.data = data_config()
  return c
