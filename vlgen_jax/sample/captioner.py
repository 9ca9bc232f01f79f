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

PMI-guided decoding (`pmi_weight` w > 0, `plausibility` a): each step ranks
ids by log p(c|i) + w (log p(c|i) - log p(c|no image)) among ids with
p(c|i) >= a * max p(c|i) (contrastive decoding's plausibility floor); the
"no image" rows run as a second half of the batch with their own cache. It
lets image evidence override a caption prior learned from correlations
(on shapes: "yellow" was never followed by "square" in training).

Reading each piece without the one before it (`mask_previous`): step t's
ids come from the decoder with the piece at t replaced by UNK (earlier
pieces stay visible), so a pair of words never seen together in training
("yellow square") is not vetoed by the bigram prior. The cache still holds
the real piece at t for later steps, so each step runs `decode_step` twice
(real piece: cache; UNK: logits). It needs a captioner trained with word
dropout (`config.model.word_dropout` > 0), which is what taught the decoder
to read UNK as "a piece I cannot see". The objective, and so the returned
score, is then the sum of these masked log-probs, not `score`.

Scores (`score`, `score_candidates`): the length-normalised log p(caption |
image), or with `pmi=True` the pointwise mutual information
  (log p(c | image) - log p(c | no image)) / n,
where p(c | no image) is the caption prior the model learned from dropped
images (captioner `cond_dropout`). PMI does not prefer captions that are
merely common or short.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from vlgen_jax.errors import UserError
from vlgen_jax.model import captioner
from vlgen_jax.sample.sampler import decode_variables
from vlgen_jax.text.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID

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


def score_and_agreement(model, params, image_tokens, text_ids):
  """image_tokens (B, N), text_ids (B, L) -> ((B,) normalised log p(caption |
  image), (B,) bool: every id of the caption is the argmax given its prefix,
  i.e. greedy decoding would write exactly this caption). One teacher-forced
  pass gives both."""
  variables = {"params": params}
  encoded, mask = model.apply(variables, image_tokens, method=Model.encode_image)
  logits = model.apply(variables, encoded, mask, text_ids, method=Model.caption_logits)
  lp, real = token_log_probs(logits, text_ids)
  # Greedy's rule (`_step_rules`): the last position can only emit EOS.
  best = jnp.argmax(logits, axis=-1).at[:, -1].set(EOS_ID)
  agree = jnp.all((best == text_ids[:, 1:]) | ~real, axis=-1)
  return jnp.sum(lp, axis=-1) / jnp.maximum(jnp.sum(real, axis=-1), 1), agree


def score_candidates(model, params, image_tokens, text_ids, *, pmi: bool = False):
  """image_tokens (B, N), text_ids (B, R, L): R candidate captions per image ->
  (B, R) scores. Each image is encoded once for its R captions."""
  variables = {"params": params}
  encoded, mask = model.apply(variables, image_tokens, method=Model.encode_image)
  num_captions = text_ids.shape[1]

  def one_image(args):
    enc, m, text = args
    enc = jnp.broadcast_to(enc[None], (num_captions, *enc.shape))
    m = jnp.broadcast_to(m[None], (num_captions, *m.shape))
    return _normalised(model, params, enc, m, text)

  total, n = jax.lax.map(one_image, (encoded, mask, text_ids))  # (B, R)
  if pmi:
    flat = text_ids.reshape(-1, text_ids.shape[-1])
    null = captioner.null_images(model.spec, flat.shape[0])
    enc0, mask0 = model.apply(variables, null, method=Model.encode_image)
    total = total - _normalised(model, params, enc0, mask0, flat)[0].reshape(total.shape)
  return total / n


# ---- decoding --------------------------------------------------------------

def _step_rules(logp, finished, position, last: int):
  """A step's log-probs with the rules of the module docstring: EOS forced at
  the last position, finished beams continue with PAD at no cost."""
  ids = jnp.arange(logp.shape[-1])
  logp = jnp.where((position == last) & (ids != EOS_ID)[None, :], -jnp.inf, logp)
  only_pad = jnp.where(ids == PAD_ID, 0.0, -jnp.inf)[None, :]
  return jnp.where(finished[:, None], only_pad, logp)


def guided_log_probs(logp, logp_prior, pmi_weight: float, plausibility: float):
  """Per-step PMI guidance, as contrastive decoding: log p(c|i) + w (log p(c|i)
  - log p(c|no image)), among ids with p(c|i) >= plausibility * max p(c|i)."""
  out = logp + pmi_weight * (logp - logp_prior)
  if plausibility > 0:
    floor = jnp.max(logp, axis=-1, keepdims=True) + np.log(plausibility)
    out = jnp.where(logp >= floor, out, -jnp.inf)
  return out


def _hidden(token, position):
  """The decoder input `token` (B,) at `position` as `mask_previous` reads it:
  UNK, except BOS at position 0."""
  return jnp.where(position == 0, token, jnp.full_like(token, UNK_ID))


def _hide_current(tokens, position):
  """tokens (B, L) with the piece at `position` hidden (`_hidden`)."""
  token = jax.lax.dynamic_index_in_dim(tokens, position, axis=1, keepdims=False)
  return jax.lax.dynamic_update_index_in_dim(tokens, _hidden(token, position), position, axis=1)


def beam_search(model, params, image_tokens, *, beam_size: int = 1, cached: bool = True,
                pmi_weight: float = 0.0, plausibility: float = 0.0, mask_previous: bool = False):
  """image_tokens (B, N) -> (text_ids (B, L) int32 `BOS ... EOS PAD...`,
  normalised scores (B,) fp32: log-probs, or with `pmi_weight` > 0 the guided
  objective of `guided_log_probs`, whose prior rows run as a second half of
  the batch; `mask_previous`: each step reads the decoder with its input
  piece hidden, module docstring). `cached=False` recomputes the full
  decoder forward over the whole sequence at every step (the reference for
  tests)."""
  spec = model.spec
  batch, width = image_tokens.shape[0], beam_size
  steps = captioner.decode_length(spec)
  guided = pmi_weight > 0
  variables = {"params": params}
  images = image_tokens
  if guided:
    images = jnp.concatenate([image_tokens, captioner.null_images(spec, batch)])
  encoded, mask = model.apply(variables, images, method=Model.encode_image)
  encoded, mask = jnp.repeat(encoded, width, axis=0), jnp.repeat(mask, width, axis=0)
  rows = batch * width
  vocab = spec.text_vocab_padded
  cache = (model.apply(variables, encoded, mask, method=Model.init_cache) if cached else {})
  step_variables = decode_variables(model, params) if cached else variables
  tokens = jnp.full((rows, steps + 1), PAD_ID, jnp.int32).at[:, 0].set(BOS_ID)
  # Only beam 0 is live at the start, so the first step's top W are distinct.
  scores = jnp.tile(jnp.where(jnp.arange(width) == 0, 0.0, -jnp.inf), (batch, 1))
  finished = jnp.zeros((rows,), bool)
  both = (lambda x: jnp.concatenate([x, x])) if guided else (lambda x: x)

  def step(carry, position):
    tokens, scores, finished, cache = carry
    if cached:
      token = jax.lax.dynamic_index_in_dim(tokens, position, axis=1, keepdims=False)
      logits, cache = model.apply(step_variables, both(token), position, cache,
                                  method=Model.decode_step)
      if mask_previous:
        # The cache keeps the real piece; this call's cache (UNK at `position`) is dropped.
        logits, _ = model.apply(step_variables, both(_hidden(token, position)), position, cache,
                                method=Model.decode_step)
    else:
      inputs = _hide_current(tokens, position) if mask_previous else tokens
      logits = model.apply(variables, encoded, mask, both(inputs), method=Model.caption_logits)
      logits = jax.lax.dynamic_index_in_dim(logits, position, axis=1, keepdims=False)
    logp = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)
    if guided:
      logp = guided_log_probs(logp[:rows], logp[rows:], pmi_weight, plausibility)
    logp = _step_rules(logp, finished, position, steps - 1)
    cand = (scores[:, :, None] + logp.reshape(batch, width, vocab)).reshape(batch, width * vocab)
    scores, flat = jax.lax.top_k(cand, width)
    source = (jnp.arange(batch)[:, None] * width + flat // vocab).reshape(rows)
    token = (flat % vocab).reshape(rows).astype(jnp.int32)
    tokens = jnp.take(tokens, source, axis=0)
    tokens = jax.lax.dynamic_update_index_in_dim(tokens, token, position + 1, axis=1)
    finished = jnp.take(finished, source, axis=0) | (token == EOS_ID)
    if cached:
      rows_source = jnp.concatenate([source, source + rows]) if guided else source
      # Each layer's (B, heads, S, kv) buffer follows its beams.
      reorder = lambda bufs: tuple(jnp.take(b, rows_source, axis=0) for b in bufs)  # noqa: E731
      cache = dict(cache, self_k=reorder(cache["self_k"]), self_v=reorder(cache["self_v"]))
    return (tokens, scores, finished, cache), None

  (tokens, scores, _, _), _ = jax.lax.scan(step, (tokens, scores, finished, cache),
                                           jnp.arange(steps, dtype=jnp.int32))
  lengths = jnp.sum(tokens[:, 1:] != PAD_ID, axis=-1).reshape(batch, width)
  normalised = scores / jnp.maximum(lengths, 1)
  best = jnp.argmax(normalised, axis=-1)
  tokens = tokens.reshape(batch, width, steps + 1)[jnp.arange(batch), best]
  return tokens, normalised[jnp.arange(batch), best]


def make_captioner(model, *, beam_size: int = 1, cached: bool = True, pmi_weight: float = 0.0,
                   plausibility: float = 0.0, mask_previous: bool = False):
  """Jitted `fn(params, image_tokens) -> (text_ids, scores)`."""
  return jax.jit(functools.partial(beam_search, model, beam_size=beam_size, cached=cached,
                                   pmi_weight=pmi_weight, plausibility=plausibility,
                                   mask_previous=mask_previous))


def make_scorer(model, *, pmi: bool = False):
  """Jitted `fn(params, image_tokens, text_ids) -> (B,)` scores."""
  return jax.jit(functools.partial(score, model, pmi=pmi))


def make_candidate_scorer(model, *, pmi: bool = False):
  """Jitted `fn(params, image_tokens (B, N), text_ids (B, R, L)) -> (B, R)`."""
  return jax.jit(functools.partial(score_candidates, model, pmi=pmi))



# ---- a trained run ------------------------------------------------------------

def find_caption_run(workdir: str) -> str:
  """The captioner run in `workdir` (itself, or the one a demo workdir names)."""
  from vlgen_jax import runs
  return runs.find_run(workdir, "caption")


def run_parts(run: str, config, vq_workdir: str | None = None) -> tuple[str, str]:
  """(VQ run, tokenizer file) the run was trained with, as it records them
  (vlgen_jax/runs.py: the export's copies, else the token dataset's record)."""
  from vlgen_jax import runs
  return runs.vq_of(run, config, vq_workdir), runs.tokenizer_of(run, config)


@dataclasses.dataclass
class Captioner:
  """A trained captioner: captions and scores images given as VQ tokens (or
  pixels, encoded with the run's VQ). Batches are padded to `batch_size`
  rows, so each function compiles once and results do not depend on batching."""
  run: str
  config: object
  model: Model
  params: object
  tokenizer: object
  vq_run: str
  batch_size: int = 64
  _vq: object = None
  _fns: dict = dataclasses.field(default_factory=dict)

  @classmethod
  def load(cls, workdir: str, *, step: int | None = None, vq_workdir: str | None = None,
           batch_size: int = 64) -> "Captioner":
    from vlgen_jax.model.spec import ModelSpec
    from vlgen_jax.tasks.caption import vq_architecture
    from vlgen_jax.text.tokenizer import TextTokenizer
    from vlgen_jax.train import checkpoint
    run = find_caption_run(workdir)
    config = checkpoint.load_config(run)
    vq_run, tokenizer_path = run_parts(run, config, vq_workdir)
    spec = ModelSpec.from_config(config)
    # "decoded": the rendering VQ's params are in the captioner's; build its architecture.
    model = Model(spec, vq_architecture(vq_run) if spec.code_embedding == "decoded" else None)
    params = checkpoint.load_params(run, step, jax.sharding.SingleDeviceSharding(jax.devices()[0]))
    return cls(run=run, config=config, model=model, params=params,
               tokenizer=TextTokenizer.from_file(tokenizer_path), vq_run=vq_run,
               batch_size=batch_size)

  @property
  def spec(self):
    return self.model.spec

  @property
  def vq(self):
    """The run's VQ tokenizer (loaded on first use)."""
    if self._vq is None:
      from vlgen_jax.vq.api import VQTokenizer
      vq = VQTokenizer.from_workdir(self.vq_run)
      if vq.num_codes != self.spec.image_vocab_size or tuple(vq.token_grid) != self.spec.image_grid:
        raise UserError(f"VQ run {self.vq_run} has {vq.num_codes} codes on a {vq.token_grid} "
                        f"grid but the captioner expects {self.spec.image_vocab_size} on "
                        f"{self.spec.image_grid}")
      self._vq = vq
    return self._vq

  def encode_images(self, images, names=None) -> np.ndarray:
    """uint8 images (each R x R x 3 at the VQ's resolution) -> tokens (n, N)."""
    r = self.vq.resolution
    for i, image in enumerate(images):
      if np.shape(image) != (r, r, 3):
        name = names[i] if names else f"image {i}"
        raise UserError(f"{name} is {'x'.join(map(str, np.shape(image)))}; the captioner's VQ "
                        f"({self.vq_run}) encodes {r}x{r}x3 images")
    tokens = [self.vq.encode(np.stack(images[i:i + self.batch_size]))
              for i in range(0, len(images), self.batch_size)]
    return np.concatenate(tokens).reshape(len(images), -1)

  def text_ids(self, captions) -> np.ndarray:
    return self.tokenizer.encode_batch(list(captions), self.spec.text_length)

  def _fn(self, key, make):
    if key not in self._fns:
      self._fns[key] = make()
    return self._fns[key]

  def _batched(self, fn, *arrays):
    """fn over fixed-size row batches of `arrays` (padded), outputs concatenated."""
    from vlgen_jax.sample.sampler import pad_batch
    n = arrays[0].shape[0]
    outs = []
    for start in range(0, n, self.batch_size):
      chunk = [pad_batch(np.asarray(a[start:start + self.batch_size]), self.batch_size)[0]
               for a in arrays]
      real = min(self.batch_size, n - start)
      out = fn(self.params, *chunk)
      outs.append(jax.tree.map(lambda x: np.asarray(x)[:real], out))
    return jax.tree.map(lambda *xs: np.concatenate(xs), *outs)

  def caption(self, image_tokens, *, beam_size: int = 1, pmi_weight: float = 0.0,
              plausibility: float = 0.0, mask_previous: bool = False
              ) -> tuple[list[str], np.ndarray]:
    """Captions of images (n, N) tokens and their normalised scores."""
    if int(beam_size) != beam_size or beam_size < 1:
      raise UserError(f"beam size must be a positive integer, got {beam_size}")
    if not pmi_weight >= 0 or not 0 <= plausibility < 1:
      raise UserError(f"PMI weight must be >= 0 and plausibility in [0, 1), got {pmi_weight}, "
                      f"{plausibility}")
    if mask_previous and not self.config.model.get("word_dropout", 0.0) > 0:
      raise UserError(f"reading pieces with the previous one hidden needs a captioner trained "
                      f"with config.model.word_dropout > 0; {self.run} was trained without")
    key = ("caption", beam_size, pmi_weight, plausibility, bool(mask_previous))
    fn = self._fn(key, lambda: make_captioner(self.model, beam_size=int(beam_size),
                                              pmi_weight=pmi_weight, plausibility=plausibility,
                                              mask_previous=bool(mask_previous)))
    ids, scores = self._batched(fn, np.asarray(image_tokens, np.int32))
    return self.tokenizer.decode_batch(ids), scores

  def score(self, image_tokens, captions, *, pmi: bool = False) -> np.ndarray:
    """(n,) scores of image i with caption i (strings)."""
    fn = self._fn(("score", pmi), lambda: make_scorer(self.model, pmi=pmi))
    return self._batched(fn, np.asarray(image_tokens, np.int32), self.text_ids(captions))

  def score_and_agreement(self, image_tokens, captions) -> tuple[np.ndarray, np.ndarray]:
    """(n,) scores of image i with caption i and (n,) bool: greedy captioning
    of image i writes exactly caption i (`score_and_agreement` above)."""
    fn = self._fn("agreement", lambda: jax.jit(functools.partial(score_and_agreement, self.model)))
    return self._batched(fn, np.asarray(image_tokens, np.int32), self.text_ids(captions))

  def prior(self, captions) -> np.ndarray:
    """(n,) normalised log p(caption | no image): the caption prior PMI divides out."""
    null = np.full((len(captions), self.spec.num_image_tokens),
                   captioner.null_image_id(self.spec), np.int32)
    return self.score(null, captions)

  def score_candidates(self, image_tokens, candidates) -> np.ndarray:
    """(n, R) normalised log p(c | image) of R candidate captions (strings) per image."""
    fn = self._fn("candidates", lambda: make_candidate_scorer(self.model))
    cands = np.asarray(candidates, dtype=object)
    text = self.text_ids(cands.reshape(-1)).reshape(*cands.shape, -1)
    return self._batched(fn, np.asarray(image_tokens, np.int32), text)
