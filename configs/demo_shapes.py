"""The full shapes recipe: `vlgen demo --config configs/demo_shapes.py`.

The quick start's stages with their full schedules: the default 50k/2k/2k
shapes splits, configs/vq_shapes.py (3500 steps) and configs/t2i_shapes.py
(10000 steps of batch 16, a sampled-and-scored validation grid every 2000
steps in TensorBoard), then a captioner and a masked judge for reranking
(docs/captioning.md). Measured results and wall time: docs/recipes.md.
Held-out pairs: `vlgen eval --workdir W --split heldout --num 200`.
"""
import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.resolution = 64
  c.train_size = 50_000
  c.validation_size = 2_000
  c.heldout_size = 2_000
  c.text_vocab_size = 128
  c.vq = ml_collections.ConfigDict({"config": "configs/vq_shapes.py", "overrides": ()})
  c.t2i = ml_collections.ConfigDict({"config": "configs/t2i_shapes.py", "overrides": ()})
  # The captioner (docs/captioning.md): its own stage, then an eval of the
  # t2i run where each image is one of 8 candidates, kept by the contrastive
  # rule. Candidates are drawn at temperature 1.0 without top-k and with a
  # plausibility floor of 0.1 (the t2i config samples at 0.3): a wider pool,
  # so the kept images vary as the data does and a clean one is nearly
  # always among the 8 (measured in docs/captioning.md).
  c.caption = ml_collections.ConfigDict({"config": "configs/caption_shapes.py", "overrides": (),
                                         "candidates": 8, "rerank": "contrastive",
                                         "sampling": {"temperature": 1.0, "top_k": 0,
                                                      "plausibility": 0.1}})
  # The contrastive rule's judge: a masked run on the same tokens (its own
  # stage). Its pseudo-likelihood scores each token given all its
  # neighbours, where the t2i run sees only the tokens before it.
  c.judge = ml_collections.ConfigDict({"config": "configs/t2i_shapes_masked.py",
                                       "overrides": ()})
  c.sample = ml_collections.ConfigDict({
      "prompts": ("a large red circle in the center",
                  "a small blue square at the top left and a large yellow triangle at the bottom right",
                  "a large green triangle on the left",   # a held-out pair
                  "a small purple circle at the bottom right",  # a held-out pair
                  ""),                                      # unconditional
      "num_per_prompt": 4,
  })
  c.eval = ml_collections.ConfigDict({"split": "validation", "num": 200})
  return c
