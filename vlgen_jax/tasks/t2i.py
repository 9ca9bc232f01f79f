"""`TextToImageTask` ("t2i"): the trainer's view of the text-to-image model."""
from __future__ import annotations

import os
from typing import Iterator

import ml_collections
import numpy as np

from vlgen_jax.errors import UserError
from vlgen_jax.model.spec import ModelSpec
from vlgen_jax.tasks.base import Task


def empty_caption_ids(config: ml_collections.ConfigDict) -> np.ndarray:
  """The empty caption: `config.data.empty_caption` ids, then pad, to text_length."""
  m = config.model
  ids = tuple(int(i) for i in config.data.empty_caption)
  if not ids:
    raise UserError("config.data.empty_caption must list the ids of the empty caption (e.g. BOS, EOS)")
  if len(ids) > m.text_length or any(not 0 <= i < m.text_vocab_size for i in ids):
    raise UserError(f"config.data.empty_caption {ids} does not fit text_length/text_vocab_size")
  if m.text_pad_id in ids:
    # An all-pad caption would leave cross-attention nothing to attend to.
    raise UserError("config.data.empty_caption must not contain the pad id")
  out = np.full(m.text_length, m.text_pad_id, np.int32)
  out[:len(ids)] = ids
  return out


def drop_captions(text_ids, rng, rate: float, empty_caption):
  """Replaces each caption by the empty caption with probability `rate` (for CFG)."""
  import jax
  import jax.numpy as jnp
  drop = jax.random.bernoulli(rng, rate, (text_ids.shape[0],))
  empty = jnp.asarray(empty_caption[:text_ids.shape[1]], text_ids.dtype)
  return jnp.where(drop[:, None], empty[None, :], text_ids)


class TextToImageTask(Task):
  """Caption -> image tokens; the model and objective come from the run's
  family (`config.model.family`, vlgen_jax/tasks/families.py)."""

  handles_remat = True  # nn.remat inside nn.scan, from config.remat
  # "decoded" embeds codes through the VQ decoder's rendering: an input-only
  # embedding, for the captioner (tasks/caption.py).
  CODE_EMBEDDINGS = ("learned", "appearance")

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    from vlgen_jax.tasks.families import get_family
    self.spec = ModelSpec.from_config(config)
    if self.spec.code_embedding not in self.CODE_EMBEDDINGS:
      raise UserError(f"config.model.code_embedding={self.spec.code_embedding!r} is not one of "
                      f"this task's {self.CODE_EMBEDDINGS}")
    self.family = get_family(self.spec.family)
    self.model = self.family.build_model(self.spec)
    self.z_loss = float(config.model.z_loss)
    self.cond_dropout = float(config.model.cond_dropout)
    if not 0.0 <= self.cond_dropout <= 1.0:
      # 1.0 trains an unconditional model (every caption empty).
      raise UserError(f"config.model.cond_dropout must be in [0, 1], got {self.cond_dropout}")
    if self.z_loss < 0:
      raise UserError(f"config.model.z_loss must be >= 0, got {self.z_loss}")
    self.empty_caption = empty_caption_ids(config)
    self._train_iterator = None
    self._tokenizer = None
    self._sample_evaluator = None
    self._code_features = None

  # ---- input -------------------------------------------------------------
  def input_iterator(self, split: str, *, batch_size: int, train: bool, seed: int,
                     process_index: int, process_count: int) -> Iterator[dict]:
    source = self.config.data.source
    if source == "synthetic":
      from vlgen_jax.data.synthetic import SyntheticCaptions
      data = SyntheticCaptions.from_config(self.config)
      return iter(data.dataset(split=split, seed=seed, batch_size=batch_size,
                               process_index=process_index, process_count=process_count))
    if source != "tokens":
      raise UserError(f"config.data.source must be 'synthetic' or 'tokens' for t2i, got {source!r}")
    from vlgen_jax.data import pipeline
    self._check_token_dataset()
    it = pipeline.make_iterator(self.config.data, split=split, batch_size=batch_size, seed=seed,
                                train=train, process_index=process_index,
                                process_count=process_count, tokenizer=self.tokenizer())
    if train:
      self._train_iterator = it
    return it

  def data_stats(self) -> dict[str, int]:
    if self._train_iterator is None:
      return {}
    from vlgen_jax.data import pipeline
    return pipeline.data_stats(self._train_iterator)

  def tokenizer(self):
    """The caption tokenizer of `config.data.tokenizer` (tokens source), loaded once."""
    if self._tokenizer is None:
      from vlgen_jax.text.tokenizer import TextTokenizer
      path = self.config.data.tokenizer
      if not path:
        raise UserError("data.source=tokens needs a text tokenizer: set --config.data.tokenizer")
      self._tokenizer = TextTokenizer.from_file(path)
    return self._tokenizer

  def _check_token_dataset(self) -> None:
    """The token dataset, tokenizer and model must agree on every shape and id."""
    from vlgen_jax.data import token_records
    data, spec = self.config.data, self.spec
    if not data.data_dir:
      raise UserError("data.source=tokens needs --config.data.data_dir (a `vlgen encode` output)")
    meta = token_records.read_info(data.data_dir)["meta"]
    grid = tuple(int(v) for v in meta["token_grid"])
    if grid != spec.image_grid or int(meta["codebook_size"]) != spec.image_vocab_size:
      raise UserError(f"token dataset {data.data_dir} has a {grid[0]}x{grid[1]} grid of "
                      f"{meta['codebook_size']} codes, the model expects image_grid="
                      f"{spec.image_grid} and image_vocab_size={spec.image_vocab_size}")
    if int(data.max_text_len) != spec.text_length:
      raise UserError(f"config.data.max_text_len={data.max_text_len} must equal "
                      f"config.model.text_length={spec.text_length}")
    tok = self.tokenizer()
    if tok.vocab_size > spec.text_vocab_size:
      raise UserError(f"the tokenizer has {tok.vocab_size} pieces, more than "
                      f"config.model.text_vocab_size={spec.text_vocab_size}")
    empty = tok.encode("", spec.text_length)[0]
    if not np.array_equal(empty, self.empty_caption):
      raise UserError(f"config.data.empty_caption {tuple(data.empty_caption)} differs from the "
                      f"tokenizer's empty caption {tuple(int(i) for i in empty if i != 0)}")

  def export_files(self) -> dict[str, str]:
    """The SentencePiece model and the VQ run's export (vlgen_jax/runs.py),
    so an export encodes prompts and decodes images on its own."""
    from vlgen_jax import runs
    from vlgen_jax.text.tokenizer import TOKENIZER_ASSET
    from vlgen_jax.train import checkpoint
    files = {}
    if self.config.data.tokenizer:
      files[TOKENIZER_ASSET] = self.config.data.tokenizer
    vq_run = runs.recorded_vq_run(self.config)
    if vq_run and checkpoint.export_step(vq_run) is not None:
      files[f"{runs.VQ_ASSET}/{checkpoint.EXPORT}"] = os.path.join(vq_run, checkpoint.EXPORT)
    return files

  # ---- model -------------------------------------------------------------
  def init(self, rng, batch: dict):
    variables = self.model.init({"params": rng}, batch["text_ids"], batch["image_tokens"])
    params = variables["params"]
    if self.spec.code_embedding == "appearance":
      from vlgen_jax.model import code_embedding
      features = self.code_features()
      params = code_embedding.set_features(params, features)
    return params, {}

  def frozen_params(self, params):
    if self.spec.code_embedding == "learned":  # the others hold frozen leaves
      return None
    from vlgen_jax.model import code_embedding
    return code_embedding.features_mask(params)

  def code_features(self) -> np.ndarray:
    """(K, p*p*3) mean training-image patch of each code, from the token
    dataset (`vlgen encode` writes it; token_records.APPEARANCE_FILE)."""
    if self._code_features is None:
      from vlgen_jax.data import token_records
      data_dir = self.config.data.data_dir
      if self.config.data.source != "tokens" or not data_dir:
        raise UserError("config.model.code_embedding='appearance' needs a token dataset "
                        "(data.source=tokens, data.data_dir): the code features come from it")
      mean, _ = token_records.read_code_appearance(data_dir)
      want = (self.spec.image_vocab_size, self.spec.code_feature_dim)
      if mean.shape != want:
        raise UserError(f"token dataset {data_dir} has code features of shape {mean.shape}; "
                        f"the model expects (image_vocab_size, code_feature_dim) = {want}")
      self._code_features = mean
    return self._code_features

  def loss(self, params, model_state, batch: dict, rng, *, train: bool):
    import jax
    text_ids, image_tokens = batch["text_ids"], batch["image_tokens"]
    if rng is None:  # an eval without a key: fixed (the masked family still draws its masks)
      rng = jax.random.key(0)
    cond_rng, model_rng = jax.random.split(rng)
    if train and self.cond_dropout > 0:
      text_ids = drop_captions(text_ids, cond_rng, self.cond_dropout, self.empty_caption)
    loss, metrics = self.family.loss(self.model, params, text_ids, image_tokens, model_rng,
                                     train=train, z_loss=self.z_loss)
    return loss, (metrics, model_state)

  # ---- evaluation ----------------------------------------------------------
  def evaluate(self, params, model_state, step: int, writer) -> dict[str, float]:
    """Samples the fixed captions of `config.sample_eval` and scores them
    (vlgen_jax/eval/training_eval.py); nothing when it is off or not due."""
    from vlgen_jax.eval import training_eval
    if not training_eval.is_due(self.config, step):
      return {}
    if self._sample_evaluator is None:
      self._sample_evaluator = training_eval.SampleEvaluator(self.config, self.model,
                                                             self.tokenizer())
    return self._sample_evaluator(params, step, writer)

  # ---- accounting ---------------------------------------------------------
  def flops_per_example(self) -> float:
    from vlgen_jax.train.accounting import training_flops_per_example
    return training_flops_per_example(self.spec)

  def tokens_per_example(self) -> int:
    return self.spec.num_image_tokens
