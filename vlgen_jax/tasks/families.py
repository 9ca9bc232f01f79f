"""Model families of the text-to-image task: one protocol, one registry.

`config.model.family` names an entry of `FAMILIES`. A family is everything
that differs between ways of generating image tokens from a caption; the
trainer, checkpointing, sharding rules, data pipeline, evaluators and CLI are
shared and never look at the family. A family provides:

  build_model(spec)   the Flax module (vlgen_jax/model/), called as
                      `model.apply(v, text_ids, image_tokens)` by `init`, so
                      params are built and sharded the same way for all;
  validate(spec)      family-specific constraints, as one-line UserErrors;
  loss(...)           the training objective on a (caption, tokens) batch;
  sample_function()   the sampler entry, `fn(model, params, text_ids, keys, *,
                      options, empty_caption, known=None, keep=None) -> tokens`
                      (`known`/`keep`: tokens to keep fixed, for editing),
                      wrapped and jitted by `sampler.make_sampler`;
  editing             "native" (every kept token conditions every regenerated
                      one) or "raster" (kept tokens are forced while decoding
                      in raster order, so a regenerated token only sees the
                      kept tokens before it: the weaker option);
  uses_steps          whether sampling runs `options.steps` parallel steps.

docs/extending.md walks through adding a family, with "masked" and
"decoder_only" as the worked examples.
"""
from __future__ import annotations

import math

import numpy as np

from vlgen_jax.errors import UserError


class Family:
  name = ""
  editing = "raster"
  uses_steps = False  # True: sampling takes `options.steps` parallel steps
  exact_likelihood = True  # False: `token_log_probs` is a pseudo-likelihood

  def build_model(self, spec):
    raise NotImplementedError

  def validate(self, spec) -> None:
    pass

  def loss(self, model, params, text_ids, image_tokens, rng, *, train: bool, z_loss: float):
    """Returns `(scalar fp32 loss, metrics)`; `rng` draws dropout (and masks)."""
    from vlgen_jax.tasks.losses import token_cross_entropy
    rngs = {"dropout": rng} if train else {}
    logits = model.apply({"params": params}, text_ids, image_tokens, train=train, rngs=rngs)
    return token_cross_entropy(logits, image_tokens, z_loss=z_loss)

  def sample_function(self, cached: bool = True):
    from vlgen_jax.sample import sampler
    return sampler.sample_tokens if cached else sampler.sample_tokens_full_recompute

  def token_log_probs(self, model, params, text_ids, image_tokens):
    """(B, N) fp32 log p(token n | caption, tokens before n), teacher-forced:
    what `loss` trains (the contrastive rerank compares captions with it)."""
    import jax
    import jax.numpy as jnp
    logits = model.apply({"params": params}, text_ids, image_tokens)
    logp = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)
    return jnp.take_along_axis(logp, image_tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]


class EncoderDecoder(Family):
  """Text encoder + causal image decoder with cross-attention (Parti)."""
  name = "encdec"

  def build_model(self, spec):
    from vlgen_jax.model.t2i import Model
    return Model(spec)


class DecoderOnly(Family):
  """Caption ids as a prefix of the image tokens in one causal stack (LlamaGen)."""
  name = "decoder_only"

  def build_model(self, spec):
    from vlgen_jax.model.decoder_only import DecoderOnlyModel
    return DecoderOnlyModel(spec)

  def validate(self, spec) -> None:
    if spec.image_positions != "learned_2d" or spec.text_positions != "learned":
      raise UserError("model.family='decoder_only' uses learned positions: set "
                      "model.image_positions='learned_2d' and model.text_positions='learned'")
    if spec.attention_impl != "xla":
      # cuDNN takes key lengths; the caption's padding sits mid-sequence here.
      raise UserError("model.family='decoder_only' needs model.attention_impl='xla'")


class Masked(Family):
  """Bidirectional image decoder trained to fill masked tokens (MaskGIT, MUSE)."""
  name = "masked"
  editing = "native"
  uses_steps = True
  exact_likelihood = False

  def build_model(self, spec):
    from vlgen_jax.model.masked import MaskedModel
    return MaskedModel(spec)

  def loss(self, model, params, text_ids, image_tokens, rng, *, train: bool, z_loss: float):
    """Cross-entropy on the masked tokens only; MaskGIT's cosine schedule:
    mask ceil(cos(pi/2 * r) * N) tokens, r ~ U[0, 1) per image."""
    import jax
    from vlgen_jax.tasks.losses import token_cross_entropy
    mask_rng, dropout_rng = jax.random.split(rng)
    mask = cosine_mask(mask_rng, image_tokens.shape)
    inputs = jax.numpy.where(mask, model.spec.mask_id, image_tokens)
    rngs = {"dropout": dropout_rng} if train else {}
    logits = model.apply({"params": params}, text_ids, inputs, train=train, rngs=rngs)
    return token_cross_entropy(logits, image_tokens, z_loss=z_loss, weights=mask)

  def sample_function(self, cached: bool = True):
    from vlgen_jax.sample import parallel
    return parallel.sample_tokens  # no cache to speak of: every step sees every token

  def token_log_probs(self, model, params, text_ids, image_tokens):
    """(B, N) fp32 pseudo-log-likelihood: log p(token n | caption, every token
    outside n's class), the 2x2 parity classes of the grid masked one at a
    time (4 passes; a masked token sees all 8 of its neighbours). Each masks
    a quarter of the tokens, inside the fractions training masks."""
    import jax
    import jax.numpy as jnp
    variables = {"params": params}
    encoded, text_mask = model.apply(variables, text_ids, method="encode_text")
    classes = parity_classes(model.spec.image_grid)
    image_tokens = image_tokens.astype(jnp.int32)
    out = jnp.zeros(image_tokens.shape, jnp.float32)
    for c in np.unique(classes):
      hidden = jnp.asarray(classes == c)[None]
      inputs = jnp.where(hidden, model.spec.mask_id, image_tokens)
      logits = model.apply(variables, encoded, text_mask, inputs, method="predict")
      logp = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)
      picked = jnp.take_along_axis(logp, image_tokens[..., None], axis=-1)[..., 0]
      out = jnp.where(hidden, picked, out)
    return out


def parity_classes(grid):
  """(H*W,) int class of each raster position: 2 * (row % 2) + col % 2."""
  rows, cols = np.divmod(np.arange(grid[0] * grid[1]), grid[1])
  return 2 * (rows % 2) + cols % 2


def cosine_mask(rng, shape):
  """(B, N) bool: per row, ceil(cos(pi/2 * r) * N) random positions, r ~ U[0, 1)."""
  import jax
  import jax.numpy as jnp
  ratio_rng, order_rng = jax.random.split(rng)
  batch, n = shape
  ratio = jnp.cos(math.pi / 2 * jax.random.uniform(ratio_rng, (batch, 1)))
  count = jnp.clip(jnp.ceil(ratio * n), 1, n).astype(jnp.int32)
  scores = jax.random.uniform(order_rng, shape)
  rank = jnp.argsort(jnp.argsort(scores, axis=-1), axis=-1)
  return rank < count


FAMILIES = {f.name: f for f in (EncoderDecoder(), Masked(), DecoderOnly())}


def get_family(name: str) -> Family:
  if name not in FAMILIES:
    raise UserError(f"unknown config.model.family {name!r}; expected one of "
                    f"{', '.join(sorted(FAMILIES))}")
  return FAMILIES[name]
