"""The shapes recipe, stage 2: a small text-to-image transformer on VQ tokens.

64 px shapes images -> 8x8 = 64 VQ tokens of a 512-code tokenizer
(configs/vq_shapes.py), captions -> SentencePiece ids (vlgen text-tokenizer).
4.5M params, ~1 GFLOP per training example: trains on a CPU box (hours;
configs/demo_quickstart.py runs a shortened schedule) and in minutes on a GPU.

  vlgen train --config configs/t2i_shapes.py --workdir W \\
      --config.data.data_dir=TOKENS_DIR --config.data.tokenizer=TOKENIZER.model
"""
from vlgen_jax.model.defaults import t2i_config


def get_config():
  c = t2i_config("tokens")
  c.model.update(
      text_vocab_size=256,        # >= the shapes tokenizer's vocabulary
      text_length=32,
      image_vocab_size=512,
      image_grid=(8, 8),
      d_model=192, num_heads=6, mlp_dim=768, encoder_layers=2, decoder_layers=4,
      image_positions="rope_2d", qk_norm=True, dropout=0.0,
      z_loss=1e-4, cond_dropout=0.1)
  c.batch_size = 64
  c.total_steps = 10_000
  c.log_every = 100
  c.eval_every = 1000
  c.eval_steps = 8
  c.checkpoint_every = 1000
  c.optimizer.update(learning_rate=1e-3, warmup_steps=500, weight_decay=0.05, end_lr_ratio=0.05)
  return c
