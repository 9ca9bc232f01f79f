"""The quick-start recipe: `vlgen demo` end to end on shapes in under 15
minutes on a 2-core CPU (README has the measured run: stage times, fidelity).

Stages and what they train:
  data       64 px shapes, a 20k-image train split
  tokenizer  SentencePiece on the captions
  vq         configs/vq_shapes.py, 2000 of its 3500 steps (reconstructions
             keep ~97% of captions satisfied)
  t2i        configs/t2i_shapes.py, 6000 of its 10000 steps, sampled with
             guidance 2 (the full schedule samples best at 1)
The full recipe (same stages, full schedules) is configs/demo_shapes.py.
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
      "overrides": ("total_steps=2000", "eval_every=0", "checkpoint_every=1000"),
  })
  c.t2i = ml_collections.ConfigDict({
      "config": "configs/t2i_shapes.py",
      # No periodic evals: the demo's eval stage scores 200 captions at the end.
      # Guidance helps the shorter-trained model (t2i_shapes.py, docs/recipes.md).
      "overrides": ("total_steps=6000", "eval_every=0", "checkpoint_every=2000",
                    "sample.cfg_scale=2.0"),
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
