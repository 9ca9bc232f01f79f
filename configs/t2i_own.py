"""Text-to-image on your own captioned images, stage 2 (after configs/vq_own.py
and `vlgen encode`).

    vlgen train --config configs/t2i_own.py --workdir W \\
        --config.data.data_dir=TOKENS_DIR --config.data.tokenizer=TOKENIZER.model

`vlgen demo --data DIR` trains it with a recipe derived from the data
(image_vocab_size, image_grid, code_feature_dim from the VQ; width, depth and
steps from the image count; docs/own_data.md). The defaults are its quick
recipe for ~5k images at 64 px (8x8 tokens of 1024 codes): the shapes
model's CPU-friendly shape (squared-ReLU MLPs, unrolled layers, learned 2-D
positions, codes embedded through their mean patch), no shapes evaluator
(`vlgen eval` reports retrieval accuracy instead), sampled at cfg 1.
"""
from vlgen_jax.tasks.t2i_defaults import t2i_config


def get_config():
  c = t2i_config("tokens")
  c.model.update(
      text_vocab_size=256, text_length=32, image_vocab_size=1024, image_grid=(8, 8),
      d_model=128, num_heads=4, mlp_dim=512, encoder_layers=1, decoder_layers=3,
      mlp="relu2", unroll_layers=True, image_positions="learned_2d", qk_norm=False, dropout=0.0,
      code_embedding="appearance", code_feature_dim=8 * 8 * 3,
      z_loss=1e-4, cond_dropout=0.1)
  c.batch_size = 16
  c.total_steps = 6000
  c.log_every = 500
  c.eval_every = 0
  c.eval_steps = 8
  c.checkpoint_every = 1000
  c.optimizer.update(learning_rate=2e-3, warmup_steps=200, weight_decay=0.05, end_lr_ratio=0.05)
  c.sample.update(cfg_scale=1.0, temperature=0.3, top_k=16)
  c.sample_eval.num = 0
  c.evaluators = ()
  return c
