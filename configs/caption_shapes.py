"""The shapes captioner: 8x8 VQ tokens of a 512-code tokenizer
(configs/vq_shapes.py) -> the caption's SentencePiece ids, on the same token
dataset as configs/t2i_shapes.py. Each grid position is embedded through its
8x8 patch of the VQ decoder's rendering of the whole grid
(code_embedding="decoded"; the token dataset's VQ run, frozen in the
params): the captioner reads what the detector and a person see, and a
color-shape pair never seen in training (a yellow square) reads as its
pixels, not as the training scenes its codes came from. 10% of training
images are dropped to the "no image" input, which teaches the caption prior
used by PMI scoring. A quarter of the teacher-forced input pieces are
replaced by UNK (word_dropout) so the next word has to come from the image,
not from the words before it; the same training lets `vlgen caption` read
each piece with the one before it hidden (caption.mask_previous), so a
color-shape pair never seen in training is not vetoed by the word prior.
These choices are measured against their alternatives in
docs/captioning.md.

  vlgen train --config configs/caption_shapes.py --workdir W \\
      --config.data.data_dir=TOKENS_DIR --config.data.tokenizer=TOKENIZER.model
"""
from vlgen_jax.tasks.t2i_defaults import caption_config


def get_config():
  c = caption_config("tokens")
  c.model.update(
      text_vocab_size=256,        # >= the shapes tokenizer's vocabulary
      text_length=32,
      image_vocab_size=512,
      image_grid=(8, 8),
      d_model=128, num_heads=4, mlp_dim=512, encoder_layers=2, decoder_layers=2,
      mlp="relu2", unroll_layers=True, image_positions="learned_2d", qk_norm=False, dropout=0.0,
      code_embedding="decoded",
      z_loss=1e-4, cond_dropout=0.1, word_dropout=0.25)
  c.caption.mask_previous = True
  c.batch_size = 32
  c.total_steps = 4000
  c.log_every = 250
  c.eval_every = 1000
  c.eval_steps = 8
  c.checkpoint_every = 1000
  c.optimizer.update(learning_rate=2e-3, warmup_steps=200, weight_decay=0.05, end_lr_ratio=0.05)
  return c
