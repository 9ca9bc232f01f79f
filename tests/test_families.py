"""Model families (vlgen_jax/tasks/families.py) on t2i_tiny: registry errors,
the decoder-only KV cache against full recompute, MaskGIT parallel decoding
(one token per step equals a step-by-step reference; determinism per seed),
editing keeps the kept tokens, and the masked loss scores masked tokens only."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlgen_jax import cli
from vlgen_jax.config import load_config
from vlgen_jax.errors import UserError
from vlgen_jax.sample import parallel, sampler
from vlgen_jax.tasks import build_task, families
from vlgen_jax.tasks.losses import token_cross_entropy

FAMILIES = ("encdec", "masked", "decoder_only")


def _task(family, *extra):
  config = load_config("configs/t2i_tiny.py", [f"--config.model.family={family}",
                                               "--config.model.decoder_layers=1", *extra])
  return build_task(config)


def _unbox(tree):
  return jax.tree.map(lambda x: x.value if hasattr(x, "value") else x, tree,
                      is_leaf=lambda x: hasattr(x, "value"))


@pytest.fixture(scope="module", params=FAMILIES)
def family_setup(request):
  task = _task(request.param)
  batch = next(task.input_iterator("train", batch_size=4, train=True, seed=0, process_index=0,
                                   process_count=1))
  params, _ = task.init(jax.random.key(0), batch)
  return task, _unbox(params), batch


def test_unknown_family_is_one_line_exit_2(capsys):
  with pytest.raises(UserError, match="unknown config.model.family 'nope'"):
    families.get_family("nope")
  rc = cli.main(["model-info", "--config", "configs/t2i_tiny.py", "--config.model.family=nope"])
  err = capsys.readouterr().err
  assert rc == 2 and err.count("\n") == 1 and err.startswith("error: unknown config.model.family")


def test_editing_keeps_the_kept_tokens(family_setup):
  task, params, batch = family_setup
  options = sampler.SamplingOptions(cfg_scale=2.0, plausibility=0.1, steps=4)
  fn = sampler.make_sampler(task.model, options, empty_caption=task.empty_caption, edit=True)
  keys = sampler.image_keys(0, 0, 4)
  known = np.asarray(batch["image_tokens"])
  keep = np.ones(known.shape, bool)
  keep[:, [1, 5, 6, 15]] = False  # regenerate four positions
  out = np.asarray(fn(params, batch["text_ids"], keys, known, keep))
  np.testing.assert_array_equal(out[keep], known[keep])
  assert out.min() >= 0 and out.max() < task.spec.image_vocab_size
  # Different seeds draw different tokens at the regenerated positions.
  other = np.asarray(fn(params, batch["text_ids"], sampler.image_keys(1, 0, 4), known, keep))
  assert not np.array_equal(out[~keep], other[~keep])


def test_decoder_only_cached_decode_equals_full_forward():
  task = _task("decoder_only", "--config.model.decoder_layers=2")
  batch = next(task.input_iterator("train", batch_size=4, train=True, seed=0, process_index=0,
                                   process_count=1))
  text, tokens = batch["text_ids"], batch["image_tokens"]
  assert (text == 0).any(), "captions of different lengths, so padding is exercised"
  params = _unbox(task.init(jax.random.key(0), batch)[0])
  model, v = task.model, {"params": params}
  full = model.apply(v, text, tokens)
  inputs = np.concatenate([np.full((4, 1), task.spec.image_bos_id), tokens[:, :-1]], axis=1)
  # The stacked params, and the layers split once as decode loops pass them.
  for step_params in (params, model.decode_params(params)):
    cache = model.apply(v, text, method="prefill")
    # One (B, heads, L + N, kv) buffer per layer, like the encoder-decoder's.
    spec = task.spec
    assert len(cache["self_k"]) == 2 and cache["self_k"][1].shape == (
        4, spec.num_heads, text.shape[1] + tokens.shape[1], spec.head_dim)
    for i in range(tokens.shape[1]):
      logits, cache = model.apply({"params": step_params}, inputs[:, i], i, cache,
                                  method="decode_step")
      np.testing.assert_allclose(logits, full[:, i], atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("cfg,chunks", [(1.0, 1), (2.0, 4)])
def test_decoder_only_cached_sampler_equals_full_recompute(cfg, chunks):
  task = _task("decoder_only")
  batch = next(task.input_iterator("train", batch_size=4, train=True, seed=0, process_index=0,
                                   process_count=1))
  params = _unbox(task.init(jax.random.key(0), batch)[0])
  # chunks > 1: the caption's slots go to the first chunk of the cache.
  options = sampler.SamplingOptions(cfg_scale=cfg, temperature=1.0, cache_chunks=chunks)
  keys = sampler.image_keys(3, 0, 4)
  cached = sampler.make_sampler(task.model, options, empty_caption=task.empty_caption)
  full = sampler.make_sampler(task.model, options, empty_caption=task.empty_caption,
                              cached=False)
  np.testing.assert_array_equal(cached(params, batch["text_ids"], keys),
                                full(params, batch["text_ids"], keys))


def _masked_setup():
  task = _task("masked")
  batch = next(task.input_iterator("train", batch_size=3, train=True, seed=0, process_index=0,
                                   process_count=1))
  return task, _unbox(task.init(jax.random.key(0), batch)[0]), batch


def test_masked_one_token_per_step_matches_step_by_step_reference():
  """steps = N, linear schedule, greedy draws, no choice noise: each step must
  fix exactly the one masked position the model is most confident about."""
  task, params, batch = _masked_setup()
  spec, v = task.spec, {"params": params}
  n = spec.num_image_tokens
  options = sampler.SamplingOptions(temperature=0.0, steps=n, mask_schedule="linear",
                                    choice_temperature=0.0)
  got = np.asarray(sampler.make_sampler(task.model, options)(
      params, batch["text_ids"], sampler.image_keys(0, 0, 3)))
  text = batch["text_ids"]
  tokens = np.full((3, n), spec.mask_id, np.int32)
  for _ in range(n):
    log_p = jax.nn.log_softmax(task.model.apply(v, text, tokens), axis=-1)
    best = np.array(jnp.max(log_p, axis=-1))  # writable copy
    arg = np.asarray(jnp.argmax(log_p, axis=-1))
    best[tokens != spec.mask_id] = -np.inf
    pos = best.argmax(axis=1)
    tokens[np.arange(3), pos] = arg[np.arange(3), pos]
  assert (tokens != spec.mask_id).all()
  np.testing.assert_array_equal(got, tokens)


def test_masked_unmasks_one_token_per_step_with_linear_schedule():
  n = 16
  unknown = jnp.full((2,), n)
  initially = jnp.full((2,), n)
  for t in range(n - 1):
    left = parallel.tokens_left_masked(unknown, initially, (t + 1) / n, "linear")
    assert (np.asarray(left) == n - t - 1).all()
    unknown = left
  # Cosine over 12 steps: monotone, ends with everything unmasked by the last draw.
  left = [int(parallel.tokens_left_masked(jnp.int32(n), jnp.int32(n), (t + 1) / 12, "cosine"))
          for t in range(11)]
  assert left == sorted(left, reverse=True) and left[0] < n and left[-1] >= 1


def test_masked_sampling_is_deterministic_per_seed_and_per_image():
  task, params, batch = _masked_setup()
  options = sampler.SamplingOptions(temperature=1.0, steps=4, cfg_scale=2.0, plausibility=0.05)
  fn = sampler.make_sampler(task.model, options, empty_caption=task.empty_caption)
  text = batch["text_ids"]
  a = np.asarray(fn(params, text, sampler.image_keys(7, 0, 3)))
  b = np.asarray(fn(params, text, sampler.image_keys(7, 0, 3)))
  np.testing.assert_array_equal(a, b)
  c = np.asarray(fn(params, text, sampler.image_keys(8, 0, 3)))
  assert not np.array_equal(a, c)
  # Image 2 alone (its own key) equals image 2 of the batch.
  one = np.asarray(fn(params, text[2:3], sampler.image_keys(7, 2, 1)))
  np.testing.assert_array_equal(one[0], a[2])


def test_masked_loss_scores_masked_tokens_only():
  task, params, batch = _masked_setup()
  rng = jax.random.key(5)
  loss, (metrics, _) = task.loss(params, {}, batch, rng, train=False)
  # The same masks by hand: the task splits rng into (caption, model) and the
  # family splits the model rng into (mask, dropout).
  _, model_rng = jax.random.split(rng)
  mask = families.cosine_mask(jax.random.split(model_rng)[0], batch["image_tokens"].shape)
  counts = np.asarray(mask).sum(axis=1)
  assert (counts >= 1).all() and (counts <= task.spec.num_image_tokens).all()
  inputs = np.where(mask, task.spec.mask_id, batch["image_tokens"])
  logits = task.model.apply({"params": params}, batch["text_ids"], inputs)
  lse = jax.nn.logsumexp(logits, axis=-1)
  target = np.take_along_axis(np.asarray(logits), batch["image_tokens"][..., None], -1)[..., 0]
  ce = np.asarray(lse - target)
  np.testing.assert_allclose(metrics["ce"], ce[np.asarray(mask)].mean(), rtol=1e-5)
  unweighted, _ = token_cross_entropy(logits, batch["image_tokens"])
  assert abs(float(unweighted) - float(metrics["ce"])) > 1e-4  # the weights mattered


def test_cosine_mask_follows_the_schedule():
  mask = np.asarray(families.cosine_mask(jax.random.key(0), (4000, 16)))
  frac = mask.mean(axis=1)
  # E[cos(pi/2 r)] = 2/pi for r ~ U[0, 1); ceil adds ~0.5 / 16.
  assert abs(frac.mean() - (2 / np.pi + 0.5 / 16)) < 0.02
  assert mask.sum(axis=1).min() >= 1


def test_masked_pseudo_likelihood_sees_everything_but_its_parity_class():
  """log p(token n | caption, tokens outside n's 2x2 parity class): equal to
  one forward pass with that class masked, blind to the class's other tokens
  and to token n itself, and changed by a token outside the class."""
  task, params, batch = _masked_setup()
  family, spec = families.get_family("masked"), task.spec
  text, tokens = batch["text_ids"], np.asarray(batch["image_tokens"], np.int32)
  lp = np.asarray(family.token_log_probs(task.model, params, text, tokens))
  assert lp.shape == tokens.shape and lp.dtype == np.float32 and (lp <= 0).all()
  classes = families.parity_classes(spec.image_grid)
  h, w = spec.image_grid
  assert np.bincount(classes).tolist() == [h * w // 4] * 4  # 4x4 grid: 4 of each
  for c in range(4):
    inputs = np.where(classes == c, spec.mask_id, tokens)
    logp = jax.nn.log_softmax(task.model.apply({"params": params}, text, inputs), axis=-1)
    direct = np.take_along_axis(np.asarray(logp), tokens[..., None], -1)[..., 0]
    np.testing.assert_allclose(lp[:, classes == c], direct[:, classes == c], atol=1e-5)
  # Position 0 is in class 0; positions 2 (class 0) and 1 (class 1) are its
  # row neighbours' neighbour and its neighbour.
  assert classes[0] == classes[2] == 0 and classes[1] == 1
  changed = tokens.copy()
  changed[:, 2] = (changed[:, 2] + 1) % spec.image_vocab_size
  after = np.asarray(family.token_log_probs(task.model, params, text, changed))
  np.testing.assert_allclose(after[:, 0], lp[:, 0], atol=1e-6)  # same class: unseen
  changed = tokens.copy()
  changed[:, 1] = (changed[:, 1] + 1) % spec.image_vocab_size
  after = np.asarray(family.token_log_probs(task.model, params, text, changed))
  assert np.abs(after[:, 0] - lp[:, 0]).max() > 1e-4  # a neighbour: seen
  assert not families.get_family("masked").exact_likelihood
  assert families.get_family("encdec").exact_likelihood
