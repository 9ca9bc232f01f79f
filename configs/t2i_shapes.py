"""The shapes recipe, stage 2: a small text-to-image transformer on VQ tokens.

64 px shapes images -> 8x8 = 64 VQ tokens of a 512-code tokenizer
(configs/vq_shapes.py), captions -> SentencePiece ids (vlgen text-tokenizer).
Small enough to train on a CPU box; fast on one GPU.

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
      d_model=256, num_heads=8, mlp_dim=1024, encoder_layers=2, decoder_layers=6,
      image_positions="rope_2d", qk_norm=True, dropout=0.0,
      z_loss=1e-4, cond_dropout=0.1)
  c.batch_size = 128
  c.total_steps = 20_000
  c.log_every = 100
  c.eval_every = 1000
  c.eval_steps = 8
  c.checkpoint_every = 1000
  c.optimizer.update(learning_rate=1e-3, warmup_steps=500, weight_decay=0.05, end_lr_ratio=0.05)
  return c
