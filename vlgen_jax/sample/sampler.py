"""Autoregressive image-token sampling: one jit-compiled `lax.scan` over tokens.

Per prompt the text is encoded once and the decoder's cross-attention K/V are
computed once (`Model.init_cache`); each step runs `Model.decode_step` on one
token against a static-size self-attention cache. Classifier-free guidance
runs the conditional and unconditional (empty-caption) rows as one batch of
2B and mixes logits as `uncond + scale_t * (cond - uncond)`. With
`plausibility` = a > 0, a code is only drawn if the *conditional* model gives
it at least a times the probability of its most likely code (contrastive
decoding's plausibility constraint, Li et al. 2022): guidance then reorders
codes the caption already makes likely instead of promoting codes both models
find unlikely. On shapes that is what makes guidance help (docs/recipes.md):
with image codes tied to their appearance, unrestricted guidance turned
near-background codes into extra objects.

Randomness is per image: image i draws its token t from
`fold_in(key_i, t)`, so an image depends only on its own key and prompt, not
on the batch it was sampled in or on its neighbours.

`decoding="jacobi"`: speculative Jacobi decoding (Teng et al., ICLR 2025,
"Accelerating Auto-regressive Text-to-Image Generation with Training-free
Speculative Jacobi Decoding"); see `sample_tokens_jacobi`. Same output
distribution as "ar", fewer sequential decoder calls.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vlgen_jax.errors import UserError
from vlgen_jax.model.spec import ModelSpec

CFG_SCHEDULES = ("constant", "linear")
MASK_SCHEDULES = ("cosine", "linear")
DECODINGS = ("ar", "jacobi")


@dataclasses.dataclass(frozen=True)
class SamplingOptions:
  """How each image token is drawn. Hashable: a static argument of the jit."""
  temperature: float = 1.0     # 0 = greedy (argmax).
  top_k: int = 0               # 0 = off; keep the k most likely codes.
  top_p: float = 1.0           # 1 = off; keep the smallest nucleus with mass >= p.
  cfg_scale: float = 1.0       # 1 = plain conditional sampling.
  cfg_schedule: str = "constant"  # "linear": scale ramps from 1 at the first token to cfg_scale.
  # 0 = off; else keep codes with p(code | caption) >= plausibility * max p(. | caption),
  # judged before guidance and temperature.
  plausibility: float = 0.0
  # Parallel decoding (masked family, vlgen_jax/sample/parallel.py; the causal
  # families ignore these): steps, the schedule of how many tokens stay masked
  # after each step, and the temperature of the Gumbel noise that randomises
  # which tokens are kept (annealed linearly to 0; MaskGIT's 4.5).
  steps: int = 12
  mask_schedule: str = "cosine"
  choice_temperature: float = 4.5
  # "ar": one token per decoder call; "jacobi": speculative Jacobi decoding,
  # a window of `draft_len` draft tokens per call (same distribution).
  decoding: str = "ar"
  draft_len: int = 16
  # AR: tokens per iteration of the decode loop (fewer loop iterations, a
  # loop body `unroll` times larger to compile). Since decode loops split the
  # layers once (`decode_variables`) it gains little: 0.91x-1.32x on a
  # 2-core CPU (docs/sampling.md). Same tokens for any value.
  unroll: int = 1
  # AR: decode in this many consecutive chunks of positions, each step
  # attending only to the cache's chunks filled so far instead of masking all
  # of it. Same tokens for any value; one loop body per chunk to compile. On
  # a CPU it pays for some lengths and not others (docs/sampling.md), so it
  # is opt-in.
  cache_chunks: int = 1

  def validate(self) -> "SamplingOptions":
    if not np.isfinite(self.temperature) or self.temperature < 0:
      raise UserError(f"temperature must be >= 0, got {self.temperature}")
    if int(self.top_k) != self.top_k or self.top_k < 0:
      raise UserError(f"top-k must be a non-negative integer, got {self.top_k}")
    if not 0.0 < self.top_p <= 1.0:
      raise UserError(f"top-p must be in (0, 1], got {self.top_p}")
    if not np.isfinite(self.cfg_scale) or self.cfg_scale < 0:
      raise UserError(f"cfg scale must be >= 0, got {self.cfg_scale}")
    if self.cfg_schedule not in CFG_SCHEDULES:
      raise UserError(f"cfg schedule must be one of {', '.join(CFG_SCHEDULES)}, "
                      f"got {self.cfg_schedule!r}")
    if not 0.0 <= self.plausibility < 1.0:
      raise UserError(f"plausibility must be in [0, 1), got {self.plausibility}")
    if int(self.steps) != self.steps or self.steps < 1:
      raise UserError(f"steps must be a positive integer, got {self.steps}")
    if self.mask_schedule not in MASK_SCHEDULES:
      raise UserError(f"mask schedule must be one of {', '.join(MASK_SCHEDULES)}, "
                      f"got {self.mask_schedule!r}")
    if not np.isfinite(self.choice_temperature) or self.choice_temperature < 0:
      raise UserError(f"choice temperature must be >= 0, got {self.choice_temperature}")
    if self.decoding not in DECODINGS:
      raise UserError(f"decoding must be one of {', '.join(DECODINGS)}, got {self.decoding!r}")
    if int(self.draft_len) != self.draft_len or self.draft_len < 1:
      raise UserError(f"draft length must be a positive integer, got {self.draft_len}")
    if int(self.unroll) != self.unroll or self.unroll < 1:
      raise UserError(f"unroll must be a positive integer, got {self.unroll}")
    if int(self.cache_chunks) != self.cache_chunks or self.cache_chunks < 1:
      raise UserError(f"cache chunks must be a positive integer, got {self.cache_chunks}")
    return self

  @classmethod
  def from_config(cls, config, **flags) -> "SamplingOptions":
    """The run's `config.sample`, each field replaced by a non-None flag;
    validated, also against the run's model (before its params are loaded).
    Fields a run's config predates take the defaults of this class."""
    values = {}
    for field in dataclasses.fields(cls):
      flag = flags.get(field.name)
      value = flag if flag is not None else config.sample.get(field.name, field.default)
      values[field.name] = type(field.default)(value)
    options = cls(**values).validate()
    num_cache_chunks(options.cache_chunks, ModelSpec.from_config(config).num_image_tokens)
    return options

  @property
  def guided(self) -> bool:
    return self.cfg_scale != 1.0


def default_sample_config() -> ml_collections.ConfigDict:
  """`config.sample`: the one home of sampling defaults (SamplingOptions')."""
  return ml_collections.ConfigDict(dataclasses.asdict(SamplingOptions()))


def kth_largest(values, k: int):
  """The k-th largest of `values` (..., V) along the last axis, keepdims.

  Equals `lax.top_k(values, k)[0][..., -1:]` without sorting: XLA:CPU runs
  top_k as a sort with a called comparator, which was a quarter of a batch-8
  decode step of the 7.7M-param sampling benchmark. The float32 values map to
  uint32 keys with the same order, and the largest key t with
  count(keys >= t) >= k is found bit by bit from the top (32 passes of one
  compare and count over V); that t is the k-th largest key exactly.
  """
  x = values.astype(jnp.float32)
  x = jnp.where(x == 0, jnp.float32(0), x)  # -0.0 == 0.0: one key for both
  bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
  negative = (bits >> 31) == 1
  keys = jnp.where(negative, ~bits, bits | jnp.uint32(1 << 31))

  def bit(i, t):
    candidate = t | (jnp.uint32(1) << (31 - i).astype(jnp.uint32))
    enough = jnp.sum(keys >= candidate, axis=-1, keepdims=True) >= k
    return jnp.where(enough, candidate, t)

  t = jax.lax.fori_loop(0, 32, bit, jnp.zeros(keys.shape[:-1] + (1,), jnp.uint32))
  t_bits = jnp.where((t >> 31) == 1, t & jnp.uint32(0x7FFFFFFF), ~t)
  return jax.lax.bitcast_convert_type(t_bits, jnp.float32).astype(values.dtype)


def filter_logits(logits, *, top_k: int = 0, top_p: float = 1.0):
  """Sets logits outside the top-k and outside the top-p nucleus to -inf.

  The nucleus is the smallest set of most likely ids whose probability mass
  is >= top_p: an id is kept when the mass strictly before it (in descending
  order) is < top_p.
  """
  if 0 < top_k < logits.shape[-1]:  # k >= V keeps every id
    # Same threshold either way. The bit search avoids XLA:CPU's slow sort;
    # on an accelerator its 32-pass loop is a device loop whose every pass
    # waits on the host, while lax.top_k is one kernel.
    if jax.default_backend() == "cpu":
      kth = kth_largest(logits, top_k)
    else:
      kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep_sorted = mass_before < top_p
    # Smallest kept logit; ties with it are kept too (they are equally likely).
    threshold = jnp.min(jnp.where(keep_sorted, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < threshold, -jnp.inf, logits)
  return logits


def keep_plausible(logits, reference_logits, plausibility: float):
  """`logits` with -inf wherever softmax(reference_logits) < plausibility * its max."""
  log_probs = jax.nn.log_softmax(reference_logits.astype(jnp.float32), axis=-1)
  floor = jnp.max(log_probs, axis=-1, keepdims=True) + np.log(plausibility)
  return jnp.where(log_probs >= floor, logits, -jnp.inf)


def draw_categorical(keys, weights):
  """keys (B,), weights (B, ..., V) >= 0 (any scale; every distribution with
  positive mass) -> one draw per distribution (B, ...) int32, by inverse CDF.

  Draw d is the first id whose cumulative weight exceeds u * total, u ~ U[0, 1)
  from the row's key: one uniform per distribution instead of Gumbel noise
  for every id (`jax.random.categorical`), 5-6x faster on CPU for (8, 16, 640)
  and (128, 640) weights. An id of zero weight is never drawn: its cumulative
  weight equals its predecessor's, and ids whose cumulative weight has
  reached the total are excluded, so float rounding of u * total cannot
  step past the last id of positive weight.
  """
  cdf = jnp.cumsum(weights.astype(jnp.float32), axis=-1)
  total = cdf[..., -1:]
  u = jax.vmap(lambda k: jax.random.uniform(k, weights.shape[1:-1] + (1,)))(keys) * total
  return jnp.sum((cdf <= u) & (cdf < total), axis=-1, dtype=jnp.int32)


def pick_tokens(logits, keys, options: SamplingOptions):
  """logits (B, V) fp32, keys (B,) -> token ids (B,) int32."""
  if options.temperature == 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = filter_logits(logits / options.temperature, top_k=options.top_k, top_p=options.top_p)
  return draw_categorical(keys, jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True)))


def guidance_scale(options: SamplingOptions, position, num_tokens: int):
  if options.cfg_schedule == "linear" and num_tokens > 1:
    return 1.0 + (options.cfg_scale - 1.0) * position / (num_tokens - 1)
  return jnp.float32(options.cfg_scale)


def image_keys(seed: int, first_index: int, count: int):
  """Keys of images `first_index ..` of a run with `seed` (independent of batching)."""
  base = jax.random.key(seed)
  return jax.vmap(lambda i: jax.random.fold_in(base, i))(
      jnp.arange(first_index, first_index + count, dtype=jnp.uint32))


def guided_text_ids(text_ids, empty_caption, guided: bool):
  """The B caption rows, then (guided) B rows of the empty caption: the 2B
  batch classifier-free guidance runs, conditional rows first."""
  if not guided:
    return text_ids
  if empty_caption is None:
    raise UserError("classifier-free guidance needs the empty caption ids")
  empty = np.asarray(empty_caption)[:text_ids.shape[1]]
  empty = jnp.broadcast_to(jnp.asarray(empty, text_ids.dtype), text_ids.shape)
  return jnp.concatenate([text_ids, empty], axis=0)


def next_token_logits(logits, batch: int, guided: bool, options: SamplingOptions, position,
                      num_tokens: int):
  """Decoder logits of B (or 2B guided: cond then uncond) rows -> the B rows to draw from."""
  cond = logits[:batch]
  mixed = cond
  if guided:
    uncond = logits[batch:]
    scale = jnp.asarray(guidance_scale(options, position, num_tokens))
    mixed = uncond + scale[..., None] * (cond - uncond)
  if options.plausibility > 0:
    mixed = keep_plausible(mixed, cond, options.plausibility)
  return mixed


def decode_variables(model, params):
  """Variables for a decode loop's steps: the params as the model's
  `decode_params` prepares them, once, outside the loop (the enc-dec decoder
  splits its stacked layers; XLA:CPU would otherwise copy every layer's
  weights at every token). Models without it get `params` as they are."""
  prepare = getattr(model, "decode_params", None)
  return {"params": prepare(params) if prepare is not None else params}


def num_cache_chunks(requested: int, num_tokens: int) -> int:
  """`requested`, checked to split the `num_tokens` positions evenly."""
  if num_tokens % requested:
    raise UserError(f"cache chunks must divide the {num_tokens} image tokens, got {requested}")
  return requested


def split_cache(cache, num_tokens: int, chunks: int):
  """The decode cache with each layer's self-attention K and V buffer
  (B, heads, S, kv) split along S into a tuple of `chunks` buffers (one
  chunk: the buffer itself, in a tuple): the image positions are the last
  `num_tokens` slots (a decoder-only cache holds the caption before them,
  which goes to the first chunk)."""
  def split(buffer):
    if chunks == 1:
      return (buffer,)
    first = buffer.shape[2] - num_tokens
    step = num_tokens // chunks
    return tuple(jnp.split(buffer, [first + step * c for c in range(1, chunks)], axis=2))
  return dict(cache, self_k=tuple(map(split, cache["self_k"])),
              self_v=tuple(map(split, cache["self_v"])))


def sample_tokens(model, params, text_ids, keys, *, options: SamplingOptions,
                  empty_caption=None, known=None, keep=None, force_guidance: bool = False):
  """text_ids (B, L) int32, keys (B,) -> image tokens (B, N) int32, with the KV cache.

  For the causal families (any model with `prefill` / `decode_step`, see
  vlgen_jax/model/t2i.py). Pure and traceable: wrap with `jax.jit` (see
  `make_sampler`) with `model`, `options` and `empty_caption` static / closed
  over. `known` (B, N) tokens where `keep` (B, N) is True are forced instead
  of drawn (editing, in raster order). `force_guidance` runs the 2B guided
  batch even at scale 1 (tests check it equals plain sampling).

  The tokens are decoded in `options.cache_chunks` consecutive scans: scan c
  passes the model the cache's chunks 0..c (`split_cache`), so a step reads
  the filled part of the cache, not all of it (`attention.write_cache`).
  """
  spec = model.spec
  batch = text_ids.shape[0]
  num_tokens = spec.num_image_tokens
  guided = options.guided or force_guidance
  text_ids = guided_text_ids(text_ids, empty_caption, guided)
  variables = {"params": params}
  chunks = num_cache_chunks(options.cache_chunks, num_tokens)
  cache = split_cache(model.apply(variables, text_ids, method="prefill"), num_tokens, chunks)
  step_variables = decode_variables(model, params)

  def step(carry, position):
    token, cache = carry
    inputs = jnp.concatenate([token, token]) if guided else token
    logits, cache = model.apply(step_variables, inputs, position, cache, method="decode_step")
    logits = next_token_logits(logits, batch, guided, options, position, num_tokens)
    step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, position)
    nxt = pick_tokens(logits, step_keys, options)
    if keep is not None:
      nxt = jnp.where(keep[:, position], known[:, position], nxt)
    return (nxt, cache), nxt

  token = jnp.full((batch,), spec.image_bos_id, jnp.int32)
  length = num_tokens // chunks
  pieces = []
  for c in range(chunks):
    positions = jnp.arange(c * length, (c + 1) * length, dtype=jnp.int32)
    (token, visible), tokens = jax.lax.scan(step, (token, first_chunks(cache, c + 1)), positions,
                                            unroll=min(options.unroll, length))
    cache = merge_chunks(visible, cache)
    pieces.append(tokens)
  return jnp.concatenate(pieces).T


def first_chunks(cache, n: int):
  """A chunked cache (`split_cache`) with only its first `n` chunks per layer."""
  return dict(cache, **{key: tuple(layer[:n] for layer in cache[key])
                        for key in ("self_k", "self_v")})


def merge_chunks(first, cache):
  """`cache` with its first chunks per layer replaced by those of `first`."""
  return dict(first, **{key: tuple(new + old[len(new):]
                                   for new, old in zip(first[key], cache[key]))
                        for key in ("self_k", "self_v")})


def token_probs(logits, options: SamplingOptions):
  """The distribution `pick_tokens` draws from: (..., V) mixed logits -> probabilities
  (one-hot of the argmax when greedy)."""
  if options.temperature == 0.0:
    return jax.nn.one_hot(jnp.argmax(logits, axis=-1), logits.shape[-1], dtype=jnp.float32)
  logits = filter_logits(logits / options.temperature, top_k=options.top_k, top_p=options.top_p)
  return jax.nn.softmax(logits, axis=-1)


def sample_tokens_jacobi(model, params, text_ids, keys, *, options: SamplingOptions,
                         empty_caption=None, force_guidance: bool = False):
  """Speculative Jacobi decoding: text_ids (B, L), keys (B,) -> (tokens (B, N),
  sequential decoder calls (scalar)).

  Each row keeps `n` accepted tokens and K = draft_len draft tokens d_j for
  positions n + j, each drawn from a recorded proposal q_j. One iteration runs
  the decoder on a K-token window (the last accepted token and the drafts, as
  decoder inputs) from start s = min(n, N - K), which gives the exact
  conditional p_i of every window position given the accepted tokens and the
  drafts before it. Drafts are then verified in order: d_j is accepted with
  probability min(1, p(d_j) / q_j(d_j)); at the first rejection a token is
  drawn from norm(max(0, p - q_j)) and the rest of the window is discarded.
  That is speculative sampling's rule, so every accepted token has the AR
  distribution p (SJD's probabilistic acceptance; with greedy decoding p is
  one-hot and this is plain Jacobi iteration, token-for-token equal to AR).
  The positions after the rejection get new drafts drawn from this call's
  p (their context was partly wrong, but any proposal is valid as long as q
  is the one drawn from), positions beyond the window uniform codes.

  Rows advance independently (per-row window starts); the loop runs until
  every row has N tokens. Windows never leave the cache: near the end the
  window starts at N - K and re-runs accepted tokens (same K/V).
  """
  from vlgen_jax.model.t2i import Model
  spec = model.spec
  batch = text_ids.shape[0]
  num_tokens = spec.num_image_tokens
  draft_len = min(int(options.draft_len), num_tokens)
  guided = options.guided or force_guidance
  text_ids = guided_text_ids(text_ids, empty_caption, guided)
  variables = {"params": params}
  encoded, text_mask = model.apply(variables, text_ids, method=Model.encode_text)
  cache = model.apply(variables, encoded, text_mask, method=Model.init_cache)
  step_variables = decode_variables(model, params)

  vocab = spec.image_vocab_padded
  uniform = jnp.where(jnp.arange(vocab) < spec.image_vocab_size,
                      1.0 / spec.image_vocab_size, 0.0).astype(jnp.float32)
  uniform = jnp.broadcast_to(uniform, (batch, draft_len, vocab))
  # Drafts from the uniform proposal: one randint per slot, not a categorical
  # draw over (B, K, V) uniform probabilities (the same distribution; that
  # draw was ~12% of a batch-8, K = 16 call on CPU).
  draw_uniform = jax.vmap(lambda k: jax.random.randint(k, (draft_len,), 0, spec.image_vocab_size,
                                                       jnp.int32))
  slots = jnp.arange(draft_len, dtype=jnp.int32)
  take = lambda a, idx: jnp.take_along_axis(a, idx, axis=1)  # noqa: E731
  fold = jax.vmap(jax.random.fold_in, in_axes=(0, None))
  init_keys = fold(keys, 2**31 - 1)

  def body(state):
    tokens, n, drafts, q, cache, it = state
    step_keys = fold(keys, it)
    k_accept, k_residual, k_fresh, k_uniform = (fold(step_keys, i) for i in range(4))
    start = jnp.minimum(n, num_tokens - draft_len)
    offset = n - start                      # window slot of the first undecided position
    positions = start[:, None] + slots      # (B, K)
    prev = positions - 1                    # the decoder input at i is the token at i - 1
    inputs = jnp.where(prev < n[:, None],
                       take(tokens, jnp.clip(prev, 0, num_tokens - 1)),
                       take(drafts, jnp.clip(prev - n[:, None], 0, draft_len - 1)))
    inputs = jnp.where(prev < 0, spec.image_bos_id, inputs)
    if guided:
      inputs, starts = jnp.concatenate([inputs, inputs]), jnp.concatenate([start, start])
    else:
      starts = start
    logits, cache = model.apply(step_variables, inputs, starts, cache,
                                method=Model.decode_window)
    p = token_probs(next_token_logits(logits, batch, guided, options, positions, num_tokens),
                    options)                                  # (B, K, V)
    # Verify: window slot w holds draft j = w - offset (slots before are accepted tokens).
    j = slots[None, :] - offset[:, None]
    jc = jnp.clip(j, 0, draft_len - 1)
    d = take(drafts, jc)
    q_slot = take(q, jc[..., None])
    p_d = jnp.take_along_axis(p, d[..., None], axis=-1)[..., 0]
    q_d = jnp.take_along_axis(q_slot, d[..., None], axis=-1)[..., 0]
    u = jax.vmap(lambda k: jax.random.uniform(k, (draft_len,)))(k_accept)
    rejected = (j >= 0) & ~(u * q_d < p_d)   # accept with probability min(1, p/q)
    first = jnp.min(jnp.where(rejected, slots[None, :], draft_len), axis=1)  # K: none
    at_first = jnp.minimum(first, draft_len - 1)[:, None, None]
    residual = jnp.maximum(take(p - q_slot, at_first)[:, 0], 0.0)
    resampled = draw_categorical(k_residual, residual)
    new_tokens = jnp.where(slots[None, :] == first[:, None], resampled[:, None], d)
    write = (j >= 0) & (slots[None, :] <= first[:, None])
    rows = jnp.arange(batch)[:, None]
    tokens = tokens.at[rows, positions].set(jnp.where(write, new_tokens, take(tokens, positions)))
    n_new = start + jnp.minimum(first + 1, draft_len)
    # New drafts for positions n_new + j: from this call's p inside the window, else uniform.
    slot = (n_new - start)[:, None] + slots
    inside = slot < draft_len
    sc = jnp.clip(slot, 0, draft_len - 1)
    fresh = draw_categorical(k_fresh, p)
    drafts = jnp.where(inside, take(fresh, sc), draw_uniform(k_uniform))
    q = jnp.where(inside[..., None], take(p, sc[..., None]), uniform)
    return tokens, n_new, drafts, q, cache, it + 1

  state = (jnp.zeros((batch, num_tokens), jnp.int32), jnp.zeros((batch,), jnp.int32),
           draw_uniform(init_keys), uniform, cache, jnp.zeros((), jnp.int32))
  tokens, _, _, _, _, calls = jax.lax.while_loop(
      lambda state: jnp.any(state[1] < num_tokens), body, state)
  return tokens, calls


def sample_tokens_full_recompute(model, params, text_ids, keys, *, options: SamplingOptions,
                                 empty_caption=None, known=None, keep=None):
  """The same sampler without any cache: every step re-runs the full forward
  (text encoder included) on the whole static-length sequence. The reference
  the cached sampler is checked and benchmarked against."""
  spec = model.spec
  batch = text_ids.shape[0]
  num_tokens = spec.num_image_tokens
  text_ids = guided_text_ids(text_ids, empty_caption, options.guided)
  variables = {"params": params}

  def step(tokens, position):
    inputs = jnp.concatenate([tokens, tokens]) if options.guided else tokens
    logits = model.apply(variables, text_ids, inputs, train=False)
    logits = jax.lax.dynamic_index_in_dim(logits, position, axis=1, keepdims=False)
    logits = next_token_logits(logits, batch, options.guided, options, position, num_tokens)
    step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, position)
    nxt = pick_tokens(logits, step_keys, options)
    if keep is not None:
      nxt = jnp.where(keep[:, position], known[:, position], nxt)
    return jax.lax.dynamic_update_index_in_dim(tokens, nxt, position, axis=1), None

  tokens = jnp.zeros((batch, num_tokens), jnp.int32)
  tokens, _ = jax.lax.scan(step, tokens, jnp.arange(num_tokens, dtype=jnp.int32))
  return tokens


def make_sampler(model, options: SamplingOptions, *, empty_caption=None, cached: bool = True,
                 edit: bool = False, mesh=None, param_shardings=None, logical_axis_rules=None,
                 with_calls: bool = False):
  """Returns jitted `fn(params, text_ids, keys) -> tokens`, the model family's
  sampler (vlgen_jax/tasks/families.py); with `edit`, `fn(params, text_ids,
  keys, known, keep)` regenerates only the tokens where `keep` is False.
  With `with_calls`: `(tokens, sequential decoder calls)` (N for AR; Jacobi
  decoding, encoder-decoder family only, reports its while-loop iterations).

  With a `mesh`, the batch is sharded over the data-parallel axes and params
  keep `param_shardings` (as trained), so a model larger than one device
  samples too; the batch must be a multiple of the data-parallel size (the
  caller pads, see `pad_batch`).
  """
  from vlgen_jax.tasks.families import get_family
  options.validate()
  empty = None if empty_caption is None else np.asarray(empty_caption)
  if options.decoding == "jacobi":
    if not cached or edit or model.spec.family != "encdec":
      raise UserError("Jacobi decoding needs the KV cache of the encdec family (and no editing)")
    fn = functools.partial(sample_tokens_jacobi, model, options=options, empty_caption=empty)
    if not with_calls:
      fn = (lambda f: lambda *a: f(*a)[0])(fn)
  else:
    fn = functools.partial(get_family(model.spec.family).sample_function(cached), model,
                           options=options, empty_caption=empty)
    if edit:
      inner = fn
      fn = lambda params, text_ids, keys, known, keep: inner(params, text_ids, keys, known=known,
                                                             keep=keep)
    if with_calls:
      fn = (lambda f: lambda *a: (f(*a), jnp.int32(model.spec.num_image_tokens)))(fn)
  if mesh is None:
    return jax.jit(fn)
  from vlgen_jax.train import sharding
  rows = sharding.batch_sharding(mesh)
  args = (param_shardings, rows, rows) + ((rows, rows) if edit else ())
  out = (rows, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())) if with_calls \
      else rows
  jitted = jax.jit(fn, in_shardings=args, out_shardings=out)

  def run(params, *rest):
    with sharding.mesh_context(mesh, logical_axis_rules or ()):
      return jitted(params, *rest)
  return run


def pad_batch(text_ids: np.ndarray, multiple: int) -> tuple[np.ndarray, int]:
  """Pads rows (repeating the last) to a multiple; returns (padded, real rows)."""
  n = text_ids.shape[0]
  extra = (-n) % multiple
  if extra:
    text_ids = np.concatenate([text_ids, np.repeat(text_ids[-1:], extra, axis=0)])
  return text_ids, n
