"""Defaults shared by the t2i configs (configs/t2i_*.py, configs/parti_*.py)."""
from __future__ import annotations

import ml_collections

from vlgen_jax.eval import training_eval
from vlgen_jax.sample import sampler
from vlgen_jax.data import synthetic
from vlgen_jax.train.defaults import trainer_config


def model_config(**overrides) -> ml_collections.ConfigDict:
  """`config.model` fields of the text-to-image model (see vlgen_jax/model/spec.py)."""
  m = ml_collections.ConfigDict({
      # How image tokens are generated (vlgen_jax/tasks/families.py): "encdec"
      # (AR decoder with cross-attention), "masked" (MaskGIT parallel
      # decoding), "decoder_only" (caption prefix, one causal stack).
      "family": "encdec",
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
      "unroll_layers": False,     # True: unroll the layer scan (faster on CPU; same params)
      # Image codes: "learned" (a row per code) | "appearance" (linear in what
      # each code looks like: frozen mean patches from the token dataset;
      # generalises to unseen attribute pairs, vlgen_jax/model/code_embedding.py).
      "code_embedding": "learned",
      "code_feature_dim": 0,      # appearance: p*p*3 (192 for an 8x VQ)
      # Loss.
      "z_loss": 1e-4,             # coefficient of mean(logsumexp^2)
      "cond_dropout": 0.1,        # fraction of captions replaced by the empty caption
  })
  m.update(overrides)
  return m


def data_config(source: str = "synthetic", **overrides) -> ml_collections.ConfigDict:
  """`config.data`: the input pipeline's fields (vlgen_jax/data/pipeline.py) plus
  `source="synthetic"` (vlgen_jax/data/synthetic.py) and the empty caption."""
  from vlgen_jax.data.pipeline import default_data_config
  d = default_data_config()
  # synthetic: generated captions/tokens (tests, debugging); tokens: a
  # `vlgen encode` token dataset in data_dir, captions tokenized with
  # data.tokenizer to data.max_text_len (= model.text_length) ids.
  d.source = source
  # Ids of the empty caption (then the pad id), used by condition dropout
  # and classifier-free guidance: BOS, EOS of vlgen_jax.text.tokenizer.
  d.empty_caption = synthetic.EMPTY_CAPTION
  d.synthetic = synthetic.default_config()
  d.update(overrides)
  return d


def t2i_config(source: str = "synthetic") -> ml_collections.ConfigDict:
  c = trainer_config()
  c.task = "t2i"
  c.model = model_config()
  c.data = data_config(source)
  # One value: overriding either field sets both.
  c.data.max_text_len = c.model.get_ref("text_length")
  # Sampling defaults of `vlgen sample` / `vlgen eval` (flags override):
  # the sampler's own (plain ancestral sampling, no guidance); recipes tune them.
  c.sample = sampler.default_sample_config()
  # Evaluators of generated images that apply to this run's data (names in
  # vlgen_jax/eval/evaluators.py, e.g. "shapes"); none for arbitrary data.
  c.evaluators = ()
  # In-training sample evaluation (vlgen_jax/eval/training_eval.py): off
  # unless `num` > 0; runs at eval steps, with the `sample` options above.
  c.sample_eval = training_eval.default_config()
  return c


def parti_config(*, encoder_layers: int, decoder_layers: int, d_model: int, mlp_dim: int,
                 num_heads: int) -> ml_collections.ConfigDict:
  """A Parti-paper model (Yu et al. 2022, Table 1) on a `vlgen encode` token dataset.

  16k SentencePiece vocabulary, 128 text tokens, 8192 image codes, 32x32
  image tokens (256 px through a ViT-VQGAN-style tokenizer at stride 8).
  Set --config.data.data_dir and --config.data.tokenizer to train.
  """
  c = t2i_config("tokens")
  c.model.update(text_vocab_size=16384, text_length=128, image_vocab_size=8192,
                 image_grid=(32, 32), d_model=d_model, num_heads=num_heads, mlp_dim=mlp_dim,
                 encoder_layers=encoder_layers, decoder_layers=decoder_layers, dropout=0.0)
  c.total_steps = 450_000
  c.log_every = 100
  c.eval_every = 5000
  c.eval_steps = 20
  c.checkpoint_every = 2000
  c.optimizer.update(name="adafactor", learning_rate=4.5e-4, schedule="linear",
                     warmup_steps=5000, end_lr_ratio=0.1, b1=0.9, b2=0.96,
                     weight_decay=0.0, grad_clip_norm=1.0)
  return c


def caption_config(source: str = "synthetic") -> ml_collections.ConfigDict:
  """The captioner (`config.task = "caption"`, vlgen_jax/model/captioner.py):
  the t2i model's fields with roles swapped (`encoder_layers` encode the image
  tokens, `decoder_layers` decode the caption; `cond_dropout` drops images)."""
  c = trainer_config()
  c.task = "caption"
  c.model = model_config()
  c.data = data_config(source)
  c.data.max_text_len = c.model.get_ref("text_length")
  # Fraction of the decoder's teacher-forced input pieces replaced by UNK
  # (word dropout): the next word must then come from the image, not only
  # from the words before it.
  c.model.word_dropout = 0.0
  # `vlgen caption` defaults (flags override): beam 1 = greedy; pmi_weight 0 =
  # plain likelihood; mask_previous reads each piece with the one before it
  # hidden (needs word_dropout > 0). vlgen_jax/sample/captioner.py has both.
  c.caption = ml_collections.ConfigDict({"beam_size": 1, "pmi_weight": 0.0, "plausibility": 0.0,
                                         "mask_previous": False})
  return c
