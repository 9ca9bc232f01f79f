"""A seconds-scale `vlgen demo` recipe for tests (tests/test_demo.py): every
stage runs end to end on a tiny shapes build; nothing is trained to quality."""
import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.resolution = 32
  c.train_size = 64
  c.validation_size = 16
  c.heldout_size = 16
  c.text_vocab_size = 64
  c.vq = ml_collections.ConfigDict({
      "config": "configs/vq_shapes.py",
      "overrides": ("total_steps=4", "log_every=2", "eval_every=0", "checkpoint_every=4",
                    "batch_size=8", "model.ch=8", "model.z_channels=8", "model.num_codes=16",
                    "vq_eval.num_examples=8", "vq_eval.batch_size=8", "data.read_threads=1"),
  })
  c.t2i = ml_collections.ConfigDict({
      "config": "configs/t2i_shapes.py",
      "overrides": ("total_steps=4", "log_every=2", "eval_every=0", "checkpoint_every=4",
                    "batch_size=8", "model.image_vocab_size=16", "model.image_grid=(4,4)",
                    "model.d_model=32", "model.num_heads=2", "model.mlp_dim=64",
                    "model.encoder_layers=1", "model.decoder_layers=1", "model.text_vocab_size=64",
                    "data.read_threads=1"),
  })
  c.caption = ml_collections.ConfigDict({
      "config": "configs/caption_shapes.py",
      "overrides": ("total_steps=4", "log_every=2", "eval_every=0", "checkpoint_every=4",
                    "batch_size=8", "model.image_vocab_size=16", "model.image_grid=(4,4)",
                    "model.d_model=32", "model.num_heads=2", "model.mlp_dim=64",
                    "model.encoder_layers=1", "model.decoder_layers=1",
                    "model.text_vocab_size=64", "data.read_threads=1"),
      "candidates": 2, "rerank": "contrastive",
  })
  # The contrastive rule's judge: a masked run on the same tokens.
  c.judge = ml_collections.ConfigDict({
      "config": "configs/t2i_shapes_masked.py",
      "overrides": c.t2i.overrides,
  })
  c.sample = ml_collections.ConfigDict({
      "prompts": ("a large red circle in the center", ""),
      "num_per_prompt": 2,
  })
  c.eval = ml_collections.ConfigDict({"split": "validation", "num": 8})
  return c
