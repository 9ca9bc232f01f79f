"""The quick-start recipe: `vlgen demo` end to end on shapes in ~15 minutes on a
2-core CPU (see README for measured results and wall times).

Stages and what they train:
  data       64 px shapes, a 20k-image train split
  tokenizer  SentencePiece on the captions
  vq         configs/vq_shapes.py, shortened
  t2i        configs/t2i_shapes.py, small and short
"""
import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.resolution = 64
  c.train_size = 20_000
  c.validation_size = 1_000
  c.heldout_size = 1_000
  c.text_vocab_size = 128
  c.vq = ml_collections.ConfigDict({
      "config": "configs/vq_shapes.py",
      # The measured quick start (README) used this variant of the VQ recipe.
      "overrides": ("total_steps=1500", "eval_every=0", "checkpoint_every=500",
                    "model.ch=256", "optimizer.learning_rate=2e-3"),
  })
  c.t2i = ml_collections.ConfigDict({
      "config": "configs/t2i_shapes.py",
      "overrides": ("total_steps=500", "model.d_model=128", "model.num_heads=4",
                    "model.mlp_dim=512", "model.encoder_layers=1", "model.decoder_layers=3",
                    "optimizer.learning_rate=2e-3", "optimizer.warmup_steps=50",
                    "log_every=50", "eval_every=0", "checkpoint_every=250"),
  })
  c.sample = ml_collections.ConfigDict({
      "prompts": ("a large red circle in the center",
                  "a small blue square at the top left and a large yellow triangle at the bottom right",
                  "a large green triangle on the left",   # a held-out pair
                  ""),                                      # unconditional
      "num_per_prompt": 4,
  })
  c.eval = ml_collections.ConfigDict({"split": "validation", "num": 200})
  return c
