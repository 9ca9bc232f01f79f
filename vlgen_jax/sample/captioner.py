"""Captioning and caption scoring with a trained captioner (`config.task = "caption"`).

Decoding is beam search (beam 1 = greedy) in one jit-compiled `lax.scan`
over the L-1 decoder positions: the image is encoded once, the text
decoder's cross-attention K/V are computed once (`Model.init_cache`), and
each step runs `Model.decode_step` for all B*W beams against a static-size
self-attention cache whose rows are reordered with their beams. A finished
beam (it emitted EOS) only continues with PAD at no cost; a beam still open
at the last position must emit EOS, so every caption is a valid encoding.
The kept beam of each image is the one with the highest length-normalised
log-probability (summed log-probs / number of ids after BOS, EOS included),
which is exactly `score` of the decoded caption. Rows never interact, so an
image's caption does not depend on the batch it was decoded in.

Scores (`score`, `score_matrix`): the length-normalised log p(caption |
image), or with `pmi=True` the pointwise mutual information
  (log p(c | image) - log p(c | no image)) / n,
where p(c | no image) is the caption prior the model learned from dropped
images (captioner `cond_dropout`). PMI does not prefer captions that are
merely common or short.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from vlgen_jax.model import captioner
from vlgen_jax.text.tokenizer import BOS_ID, EOS_ID, PAD_ID

Model = captioner.Model


# ---- scoring ---------------------------------------------------------------

def token_log_probs(logits, text_ids):
  """(log p of each target id (B, L-1), mask (B, L-1) bool: target is not PAD)."""
  targets = text_ids[:, 1:]
  logp = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)
  lp = jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  mask = targets != PAD_ID
  return jnp.where(mask, lp, 0.0), mask


def _normalised(model, params, encoded, image_mask, text_ids):
  logits = model.apply({"params": params}, encoded, image_mask, text_ids,
                       method=Model.caption_logits)
  lp, mask = token_log_probs(logits, text_ids)
  return jnp.sum(lp, axis=-1), jnp.maximum(jnp.sum(mask, axis=-1), 1)


def score(model, params, image_tokens, text_ids, *, pmi: bool = False):
  """image_tokens (B, N), text_ids (B, L) -> (B,) fp32: length-normalised
  log p(caption | image), or the PMI variant. Pure; jit it (`make_scorer`)."""
  variables = {"params": params}
  encoded, mask = model.apply(variables, image_tokens, method=Model.encode_image)
  total, n = _normalised(model, params, encoded, mask, text_ids)
  if pmi:
    null = captioner.null_images(model.spec, image_tokens.shape[0])
    enc0, mask0 = model.apply(variables, null, method=Model.encode_image)
    total = total - _normalised(model, params, enc0, mask0, text_ids)[0]
  return total / n


def score_matrix(model, params, image_tokens, text_ids, *, pmi: bool = False):
  """image_tokens (B, N), text_ids (R, L) -> (B, R): every image against every
  caption. Each image is encoded once; the caption prior (PMI) once per caption."""
  variables = {"params": params}
  encoded, mask = model.apply(variables, image_tokens, method=Model.encode_image)
  num_captions = text_ids.shape[0]

  def one_image(enc, m):
    enc = jnp.broadcast_to(enc[None], (num_captions, *enc.shape))
    m = jnp.broadcast_to(m[None], (num_captions, *m.shape))
    return _normalised(model, params, enc, m, text_ids)

  total, n = jax.lax.map(lambda a: one_image(*a), (encoded, mask))  # (B, R)
  if pmi:
    null = captioner.null_images(model.spec, num_captions)
    enc0, mask0 = model.apply(variables, null, method=Model.encode_image)
    total = total - _normalised(model, params, enc0, mask0, text_ids)[0][None, :]
  return total / n


# ---- decoding --------------------------------------------------------------

def _step_log_probs(logits, finished, position, last: int):
  """log-softmax of a step's logits with the rules of the module docstring."""
  logp = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)
  ids = jnp.arange(logp.shape[-1])
  logp = jnp.where((position == last) & (ids != EOS_ID)[None, :], -jnp.inf, logp)
  only_pad = jnp.where(ids == PAD_ID, 0.0, -jnp.inf)[None, :]
  return jnp.where(finished[:, None], only_pad, logp)


def beam_search(model, params, image_tokens, *, beam_size: int = 1, cached: bool = True):
  """image_tokens (B, N) -> (text_ids (B, L) int32 `BOS ... EOS PAD...`,
  normalised log-probs (B,) fp32). `cached=False` recomputes the full decoder
  forward over the whole sequence at every step (the reference for tests)."""
  spec = model.spec
  batch, width = image_tokens.shape[0], beam_size
  steps = captioner.decode_length(spec)
  variables = {"params": params}
  encoded, mask = model.apply(variables, image_tokens, method=Model.encode_image)
  encoded, mask = jnp.repeat(encoded, width, axis=0), jnp.repeat(mask, width, axis=0)
  rows = batch * width
  vocab = spec.text_vocab_padded
  cache = (model.apply(variables, encoded, mask, method=Model.init_cache) if cached else {})
  tokens = jnp.full((rows, steps + 1), PAD_ID, jnp.int32).at[:, 0].set(BOS_ID)
  # Only beam 0 is live at the start, so the first step's top W are distinct.
  scores = jnp.tile(jnp.where(jnp.arange(width) == 0, 0.0, -jnp.inf), (batch, 1))
  finished = jnp.zeros((rows,), bool)

  def step(carry, position):
    tokens, scores, finished, cache = carry
    if cached:
      token = jax.lax.dynamic_index_in_dim(tokens, position, axis=1, keepdims=False)
      logits, cache = model.apply(variables, token, position, cache, method=Model.decode_step)
    else:
      logits = model.apply(variables, encoded, mask, tokens, method=Model.caption_logits)
      logits = jax.lax.dynamic_index_in_dim(logits, position, axis=1, keepdims=False)
    logp = _step_log_probs(logits, finished, position, steps - 1)
    cand = (scores[:, :, None] + logp.reshape(batch, width, vocab)).reshape(batch, width * vocab)
    scores, flat = jax.lax.top_k(cand, width)
    source = (jnp.arange(batch)[:, None] * width + flat // vocab).reshape(rows)
    token = (flat % vocab).reshape(rows).astype(jnp.int32)
    tokens = jnp.take(tokens, source, axis=0)
    tokens = jax.lax.dynamic_update_index_in_dim(tokens, token, position + 1, axis=1)
    finished = jnp.take(finished, source, axis=0) | (token == EOS_ID)
    if cached:
      cache = dict(cache, self_k=jnp.take(cache["self_k"], source, axis=1),
                   self_v=jnp.take(cache["self_v"], source, axis=1))
    return (tokens, scores, finished, cache), None

  (tokens, scores, _, _), _ = jax.lax.scan(step, (tokens, scores, finished, cache),
                                           jnp.arange(steps, dtype=jnp.int32))
  lengths = jnp.sum(tokens[:, 1:] != PAD_ID, axis=-1).reshape(batch, width)
  normalised = scores / jnp.maximum(lengths, 1)
  best = jnp.argmax(normalised, axis=-1)
  tokens = tokens.reshape(batch, width, steps + 1)[jnp.arange(batch), best]
  return tokens, normalised[jnp.arange(batch), best]


def make_captioner(model, *, beam_size: int = 1, cached: bool = True):
  """Jitted `fn(params, image_tokens) -> (text_ids, scores)`."""
  return jax.jit(functools.partial(beam_search, model, beam_size=beam_size, cached=cached))


def make_scorer(model, *, pmi: bool = False):
  """Jitted `fn(params, image_tokens, text_ids) -> (B,)` scores."""
  return jax.jit(functools.partial(score, model, pmi=pmi))


def make_score_matrix(model, *, pmi: bool = False):
  """Jitted `fn(params, image_tokens (B, N), text_ids (R, L)) -> (B, R)`."""
  return jax.jit(functools.partial(score_matrix, model, pmi=pmi))

