"""`CaptionTask` ("caption"): the trainer's view of the captioning model.

Same data as t2i (a `vlgen encode` token dataset or the synthetic captions,
`{"image_tokens", "text_ids"}` batches), same tokenizer checks, code
features and export assets (it is a `TextToImageTask` with the model and
loss swapped). `config.model.cond_dropout` here drops the *image*: that
fraction of training examples see the "no image" input, so the model also
learns the caption prior p(c | no image) that PMI scoring divides out.

Metrics: next-id cross-entropy and token accuracy over the caption's real
ids (EOS included, PAD not), and `exact_caption_accuracy`: the fraction of
captions whose every id is the model's argmax given the true prefix, which
is exactly the fraction that greedy decoding reproduces word for word.
"""
from __future__ import annotations

import ml_collections

from vlgen_jax.tasks.t2i import TextToImageTask


def drop_images(image_tokens, rng, rate: float, null_id: int):
  """Replaces each example's image by the "no image" input with probability `rate`."""
  import jax
  import jax.numpy as jnp
  drop = jax.random.bernoulli(rng, rate, (image_tokens.shape[0],))
  return jnp.where(drop[:, None], jnp.asarray(null_id, image_tokens.dtype), image_tokens)


def drop_words(text_ids, rng, rate: float):
  """Replaces each caption piece (not BOS, EOS or PAD) by UNK with
  probability `rate`; used as the decoder's input only, never as targets."""
  import jax
  import jax.numpy as jnp
  from vlgen_jax.text.tokenizer import EOS_ID, UNK_ID
  drop = jax.random.bernoulli(rng, rate, text_ids.shape) & (text_ids > EOS_ID)
  return jnp.where(drop, jnp.asarray(UNK_ID, text_ids.dtype), text_ids)


def caption_targets(text_ids):
  """(targets (B, L-1), mask (B, L-1) bool) of the decoder's L-1 positions."""
  from vlgen_jax.text.tokenizer import PAD_ID
  targets = text_ids[:, 1:]
  return targets, targets != PAD_ID


def vq_architecture(vq_run: str):
  """The VQConfig of a VQ run (what `code_embedding="decoded"` builds)."""
  from vlgen_jax.train import checkpoint
  from vlgen_jax.vq.model import VQConfig
  return VQConfig.from_config(checkpoint.load_config(vq_run).model)


def decoded_vq(config) -> tuple[str, int | None, object]:
  """(VQ run, its step, VQConfig) that `code_embedding="decoded"` renders codes
  with: the run the token dataset records (`vlgen encode`)."""
  from vlgen_jax import runs
  from vlgen_jax.data import token_records
  from vlgen_jax.errors import UserError
  vq_run = runs.recorded_vq_run(config)
  if not vq_run or not runs.is_run(vq_run):
    raise UserError("config.model.code_embedding='decoded' renders codes with the VQ run that "
                    f"encoded the token dataset, but {config.data.data_dir!r} records "
                    f"{vq_run or 'none'} (data.source must be 'tokens', made by `vlgen encode`)")
  step = token_records.read_info(config.data.data_dir)["meta"].get("vq_step")
  return vq_run, step, vq_architecture(vq_run)


def load_vq_params(vq_run: str, step: int | None):
  """A VQ run's model params (`params["vq"]`) as host numpy arrays."""
  import jax
  from vlgen_jax.train import checkpoint
  cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
  return jax.device_get(checkpoint.load_params(vq_run, step, cpu)["vq"])


class CaptionTask(TextToImageTask):
  """Image-token encoder + causal caption decoder trained with next-id loss."""

  CODE_EMBEDDINGS = ("learned", "appearance", "decoded")

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    from vlgen_jax.model import captioner
    vq_config, self.vq_params = None, None
    if self.spec.code_embedding == "decoded":
      vq_run, vq_step, vq_config = decoded_vq(config)
      if vq_config.num_codes != self.spec.image_vocab_size:
        from vlgen_jax.errors import UserError
        raise UserError(f"config.model.image_vocab_size={self.spec.image_vocab_size} but the "
                        f"VQ run {vq_run} has {vq_config.num_codes} codes")
      # Read here, not in `init`: the trainer traces `init`, and a checkpoint
      # cannot be restored inside a trace.
      self.vq_params = load_vq_params(vq_run, vq_step)
    self.model = captioner.Model(self.spec, vq_config)
    self.word_dropout = float(config.model.get("word_dropout", 0.0))
    if not 0.0 <= self.word_dropout < 1.0:
      from vlgen_jax.errors import UserError
      raise UserError(f"config.model.word_dropout must be in [0, 1), got {self.word_dropout}")

  def init(self, rng, batch: dict):
    from vlgen_jax.model import code_embedding
    variables = self.model.init({"params": rng}, batch["image_tokens"], batch["text_ids"])
    params = variables["params"]
    if self.spec.code_embedding == "appearance":
      params = code_embedding.set_features(params, self.code_features())
    if self.spec.code_embedding == "decoded":
      params = code_embedding.set_frozen_vq(params, self.vq_params)
    return params, {}

  def loss(self, params, model_state, batch: dict, rng, *, train: bool):
    import jax
    import jax.numpy as jnp
    from vlgen_jax.model.captioner import null_image_id
    from vlgen_jax.tasks.losses import token_cross_entropy
    text_ids, image_tokens = batch["text_ids"], batch["image_tokens"]
    inputs, rngs = text_ids, {}
    if train:
      drop_rng, dropout_rng = jax.random.split(rng)
      if self.cond_dropout > 0:
        image_tokens = drop_images(image_tokens, drop_rng, self.cond_dropout,
                                   null_image_id(self.spec))
      if self.word_dropout > 0:
        inputs = drop_words(text_ids, jax.random.fold_in(drop_rng, 1), self.word_dropout)
      rngs = {"dropout": dropout_rng}
    # The model reads inputs[:, :-1]; targets are always the true ids.
    logits = self.model.apply({"params": params}, image_tokens, inputs, train=train, rngs=rngs)
    targets, mask = caption_targets(text_ids)
    loss, metrics = token_cross_entropy(logits, targets, z_loss=self.z_loss, weights=mask)
    right = (jnp.argmax(logits, axis=-1) == targets) | ~mask
    metrics["exact_caption_accuracy"] = jnp.mean(jnp.all(right, axis=-1).astype(jnp.float32))
    return loss, (metrics, model_state)

  def evaluate(self, params, model_state, step: int, writer) -> dict[str, float]:
    # Caption quality is in the eval loss metrics (exact_caption_accuracy);
    # the t2i sample evaluation does not apply.
    return {}

  def flops_per_example(self) -> float:
    from vlgen_jax.train.accounting import encoder_decoder_flops
    from vlgen_jax.model.captioner import decode_length
    s = self.spec
    return 3.0 * sum(encoder_decoder_flops(s, source=s.num_image_tokens,
                                           target=decode_length(s),
                                           out_vocab=s.text_vocab_padded).values())

  def tokens_per_example(self) -> int:
    from vlgen_jax.model.captioner import decode_length
    return decode_length(self.spec)
