"""Tiny captioner on synthetic data (tests, smoke runs on CPU): the image of
4x4 tokens of 64 codes shows each caption word as a band of codes
(vlgen_jax/model/synthetic.py), so the caption is readable from the image."""
from vlgen_jax.tasks.t2i_defaults import caption_config


def get_config():
  c = caption_config()
  c.model.update(
      text_vocab_size=128, text_length=8, image_vocab_size=64, image_grid=(4, 4),
      d_model=64, num_heads=4, mlp_dim=128, encoder_layers=1, decoder_layers=2)
  c.data.synthetic.update(num_words=32, min_words=1, max_words=4)
  c.batch_size = 64
  c.total_steps = 200
  c.log_every = 50
  c.eval_every = 50
  c.checkpoint_every = 50
  c.optimizer.learning_rate = 5e-3
  c.optimizer.warmup_steps = 20
  c.optimizer.weight_decay = 0.0
  return c
