"""Sampler: filtering rules, greedy limits, CFG, seeds, padded ids, cache vs
full recompute, and sharded == single device."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlgen_jax.config import load_config
from vlgen_jax.errors import UserError
from vlgen_jax.model.spec import ModelSpec
from vlgen_jax.model.t2i import Model
from vlgen_jax.tasks.t2i import empty_caption_ids
from vlgen_jax.sample import sampler
from vlgen_jax.sample.sampler import SamplingOptions
from vlgen_jax.train import sharding


@pytest.fixture(scope="module")
def tiny():
  config = load_config("configs/t2i_tiny.py", ["--config.dtype=float32"])
  spec = ModelSpec.from_config(config)
  model = Model(spec)
  rng = np.random.default_rng(0)
  text = rng.integers(4, spec.text_vocab_size, (6, spec.text_length)).astype(np.int32)
  text[:, -2:] = spec.text_pad_id  # some padding in every caption
  boxed = model.init(jax.random.key(0), jnp.asarray(text),
                     jnp.zeros((6, spec.num_image_tokens), jnp.int32))["params"]
  params = sharding.unbox(boxed)
  # Sharper logits than at init, so sampling is not near-uniform and seeds,
  # top-k and top-p make visible differences.
  params = jax.tree.map(lambda p: p * 3.0 if p.ndim >= 2 else p, params)
  return dict(config=config, spec=spec, model=model, params=params, boxed=boxed,
              text=jnp.asarray(text), empty=empty_caption_ids(config))


def _run(tiny, options, *, seed=0, cached=True, text=None, **kw):
  text = tiny["text"] if text is None else text
  keys = sampler.image_keys(seed, 0, text.shape[0])
  fn = sampler.sample_tokens if cached else sampler.sample_tokens_full_recompute
  fn = jax.jit(functools.partial(fn, tiny["model"], options=options,
                                 empty_caption=tiny["empty"], **kw))
  return np.asarray(fn(tiny["params"], text, keys))


def test_top_p_keeps_exactly_the_smallest_nucleus():
  probs = np.array([[0.5, 0.3, 0.15, 0.05], [0.05, 0.15, 0.3, 0.5]])
  logits = jnp.log(jnp.asarray(probs))
  kept = lambda p: np.isfinite(np.asarray(sampler.filter_logits(logits, top_p=p)))  # noqa: E731
  np.testing.assert_array_equal(kept(0.5), [[1, 0, 0, 0], [0, 0, 0, 1]])
  np.testing.assert_array_equal(kept(0.7), [[1, 1, 0, 0], [0, 0, 1, 1]])
  np.testing.assert_array_equal(kept(0.79), [[1, 1, 0, 0], [0, 0, 1, 1]])
  np.testing.assert_array_equal(kept(0.81), [[1, 1, 1, 0], [0, 1, 1, 1]])
  np.testing.assert_array_equal(kept(1.0), np.ones((2, 4)))
  # top-k and top-p together: the intersection.
  both = np.isfinite(np.asarray(sampler.filter_logits(logits, top_k=1, top_p=0.9)))
  np.testing.assert_array_equal(both, [[1, 0, 0, 0], [0, 0, 0, 1]])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_kth_largest_equals_lax_top_k(dtype):
  rng = np.random.default_rng(0)
  for trial in range(40):
    v = int(rng.integers(1, 700))
    k = int(rng.integers(1, v + 1))
    x = rng.standard_normal((3, v)) * rng.choice([1e-3, 1.0, 1e3])
    if trial % 3 == 0:
      x = np.round(x)  # ties, the k-th among them
    if trial % 5 == 0:
      x[:, rng.integers(0, v, size=v // 3)] = -np.inf
    if trial % 7 == 0:
      x[0, : v // 2] = -0.0
    x = jnp.asarray(x, dtype)
    want = jax.lax.top_k(x, k)[0][..., -1:]
    got = sampler.kth_largest(x, k)
    assert got.dtype == x.dtype
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))
  x = jnp.asarray([[0.5, -1.0, 2.0]], dtype)
  assert np.isfinite(np.asarray(sampler.filter_logits(x, top_k=3), np.float32)).all()
  assert np.isfinite(np.asarray(sampler.filter_logits(x, top_k=7), np.float32)).all()


def test_top_k_keeps_the_same_ids_on_every_backend(monkeypatch):
  """filter_logits takes the bit search on CPU and lax.top_k elsewhere (a
  GPU's 32-pass loop waits on the host each pass); both keep the same ids."""
  rng = np.random.default_rng(1)
  x = rng.standard_normal((4, 3, 300)).astype(np.float32)
  x[1] = np.round(x[1])  # ties at the k-th value are kept on both paths
  x[2, :, :100] = -np.inf
  for dtype in (jnp.float32, jnp.bfloat16):
    logits = jnp.asarray(x, dtype)
    on_cpu = {k: np.asarray(sampler.filter_logits(logits, top_k=k), np.float32)
              for k in (1, 16, 299)}
    with monkeypatch.context() as m:
      m.setattr(jax, "default_backend", lambda: "gpu")
      for k, want in on_cpu.items():
        got = np.asarray(sampler.filter_logits(logits, top_k=k), np.float32)
        np.testing.assert_array_equal(got, want)
        assert np.isfinite(got).sum() >= 4 * 3 * min(k, 200)


def test_top_p_samples_only_from_the_nucleus():
  logits = jnp.log(jnp.asarray([[0.4, 0.35, 0.2, 0.05]] * 4000))
  keys = sampler.image_keys(3, 0, 4000)
  tokens = np.asarray(sampler.pick_tokens(logits, keys, SamplingOptions(top_p=0.7)))
  counts = np.bincount(tokens, minlength=4) / tokens.size
  assert counts[2] == 0 and counts[3] == 0
  np.testing.assert_allclose(counts[:2], [0.4 / 0.75, 0.35 / 0.75], atol=0.03)


def test_draw_categorical_draws_each_id_with_its_weights_share():
  """Inverse-CDF draws: chi-square against the weights, zero-weight ids (first,
  inner, trailing) never drawn, any scale of the weights, one draw per row
  of a (B, K, V) batch from the row's key."""
  from scipy import stats
  weights = np.asarray([0.0, 3.0, 0.0, 1.0, 0.5, 2.5, 0.0, 0.0], np.float32)
  draws = 8000
  keys = sampler.image_keys(5, 0, draws)
  tokens = np.asarray(sampler.draw_categorical(keys, jnp.broadcast_to(weights, (draws, 8))))
  observed = np.bincount(tokens, minlength=8)
  assert observed[weights == 0].sum() == 0
  expected = weights[weights > 0] / weights.sum() * draws
  chi2 = (((observed[weights > 0] - expected) ** 2) / expected).sum()
  assert chi2 < stats.chi2.ppf(0.999, 3), (observed, expected)
  # Scaling by a power of two changes no draw; weights of 1e-30 still sum.
  for scale in (2.0 ** -100, 2.0 ** 20):
    scaled = sampler.draw_categorical(keys, jnp.broadcast_to(weights * scale, (draws, 8)))
    np.testing.assert_array_equal(np.asarray(scaled), tokens)
  # The last id of positive weight is reachable, never what follows it.
  tail = np.zeros(640, np.float32)
  tail[[0, 511]] = [1.0, 1e-3]
  many = np.asarray(sampler.draw_categorical(sampler.image_keys(6, 0, 20000),
                                             jnp.broadcast_to(tail, (20000, 640))))
  assert set(np.unique(many)) == {0, 511}
  # (B, K, V): row b, slot k uses only row b's key.
  batch = jnp.asarray(np.random.default_rng(0).random((4, 3, 8)), jnp.float32)
  got = np.asarray(sampler.draw_categorical(keys[:4], batch))
  assert got.shape == (4, 3)
  for b in range(4):
    alone = sampler.draw_categorical(keys[b:b + 1], batch[b:b + 1])
    np.testing.assert_array_equal(np.asarray(alone)[0], got[b])


def test_unrolled_decode_loop_draws_the_same_tokens(tiny):
  opts = SamplingOptions(temperature=1.0, top_k=8, cfg_scale=2.0)
  np.testing.assert_array_equal(
      _run(tiny, dataclasses.replace(opts, unroll=4), seed=3), _run(tiny, opts, seed=3))


@pytest.mark.parametrize("chunks", [2, 4, 16])
def test_chunked_cache_draws_the_same_tokens(tiny, chunks):
  """Decoding in chunks that attend only to the filled part of the cache
  draws the tokens of one fully masked buffer."""
  opts = SamplingOptions(temperature=1.0, top_k=8, cfg_scale=2.0)
  np.testing.assert_array_equal(
      _run(tiny, dataclasses.replace(opts, cache_chunks=chunks), seed=3), _run(tiny, opts, seed=3))


def test_cache_chunks_must_split_the_tokens_evenly(tiny):
  assert sampler.num_cache_chunks(4, 16) == 4
  with pytest.raises(UserError, match="cache chunks must divide the 16 image tokens, got 3"):
    sampler.num_cache_chunks(3, 16)
  # Checked against the run's model when the options are read, before any params load.
  assert SamplingOptions.from_config(tiny["config"], cache_chunks=4).cache_chunks == 4
  with pytest.raises(UserError, match="cache chunks must divide the 16 image tokens, got 3"):
    SamplingOptions.from_config(tiny["config"], cache_chunks=3)


def test_top_k_1_and_temperature_to_zero_equal_greedy(tiny):
  greedy = _run(tiny, SamplingOptions(temperature=0.0))
  np.testing.assert_array_equal(_run(tiny, SamplingOptions(top_k=1, temperature=1.0), seed=5), greedy)
  np.testing.assert_array_equal(_run(tiny, SamplingOptions(temperature=1e-6), seed=7), greedy)


def test_cfg_scale_one_equals_conditional_sampling(tiny):
  plain = _run(tiny, SamplingOptions(temperature=1.0))
  guided = _run(tiny, SamplingOptions(temperature=1.0, cfg_scale=1.0), force_guidance=True)
  np.testing.assert_array_equal(guided, plain)
  # And a real guidance scale changes the images.
  assert (_run(tiny, SamplingOptions(temperature=1.0, cfg_scale=3.0)) != plain).any()


def test_seeds(tiny):
  opts = SamplingOptions(temperature=1.0)
  a, b, c = _run(tiny, opts, seed=1), _run(tiny, opts, seed=1), _run(tiny, opts, seed=2)
  np.testing.assert_array_equal(a, b)
  assert all((a[i] != c[i]).any() for i in range(len(a)))
  # An image depends on its own key, not on the batch it is sampled in.
  keys = sampler.image_keys(1, 0, 6)
  fn = jax.jit(functools.partial(sampler.sample_tokens, tiny["model"], options=opts))
  one = np.asarray(fn(tiny["params"], tiny["text"][2:3], keys[2:3]))
  np.testing.assert_array_equal(one[0], a[2])


def test_padded_ids_never_sampled(tiny):
  spec = tiny["spec"]
  tokens = _run(tiny, SamplingOptions(temperature=50.0), seed=3)  # near-uniform over all logits
  assert tokens.min() >= 0 and tokens.max() < spec.image_vocab_size
  assert len(np.unique(tokens)) > spec.image_vocab_size // 2


@pytest.mark.parametrize("options", [SamplingOptions(temperature=0.0),
                                     SamplingOptions(temperature=1.0, top_k=8, top_p=0.9,
                                                     cfg_scale=2.0, cfg_schedule="linear"),
                                     SamplingOptions(temperature=0.5, cfg_scale=3.0,
                                                     plausibility=0.1, cache_chunks=4)])
def test_cached_equals_full_recompute(tiny, options):
  np.testing.assert_array_equal(_run(tiny, options, seed=4),
                                _run(tiny, options, seed=4, cached=False))


@pytest.mark.parametrize("chunks", [1, 4])
def test_sharded_sampling_equals_single_device(tiny, chunks):
  from vlgen_jax.train import mesh as mesh_lib
  config = tiny["config"]
  opts = SamplingOptions(temperature=1.0, top_k=16, cfg_scale=2.0)
  text = jnp.concatenate([tiny["text"], tiny["text"][:2]])  # 8 rows
  expected = _run(tiny, opts, seed=9, text=text)
  opts = dataclasses.replace(opts, cache_chunks=chunks)
  config.mesh.update(data=2, fsdp=2, tensor=2)
  mesh = mesh_lib.create_mesh(config)
  rules = sharding.logical_axis_rules(config)
  shardings = sharding.logical_to_shardings(sharding.logical_specs(tiny["boxed"]), mesh, rules)
  params = jax.device_put(tiny["params"], shardings)
  fn = sampler.make_sampler(tiny["model"], opts, empty_caption=tiny["empty"], mesh=mesh,
                            param_shardings=shardings, logical_axis_rules=rules)
  got = fn(params, text, sampler.image_keys(9, 0, 8))
  assert len(got.sharding.device_set) == 8
  np.testing.assert_array_equal(np.asarray(got), expected)


def test_keep_plausible_rule():
  probs = np.array([[0.5, 0.2, 0.04, 0.26], [0.1, 0.1, 0.1, 0.7]])
  reference = jnp.log(jnp.asarray(probs))
  logits = jnp.asarray([[1.0, 2.0, 3.0, 4.0]] * 2)
  kept = lambda a: np.asarray(sampler.keep_plausible(logits, reference, a))  # noqa: E731
  # p >= 0.1 * max p: 0.05 and 0.07 are the floors.
  np.testing.assert_array_equal(kept(0.1), [[1, 2, -np.inf, 4], [1, 2, 3, 4]])
  # p >= 0.5 * max: 0.26 >= 0.25 stays; in row 2 only the top code.
  np.testing.assert_array_equal(kept(0.5), [[1, -np.inf, -np.inf, 4],
                                            [-np.inf, -np.inf, -np.inf, 4]])


def test_plausibility_stops_guidance_promoting_codes_the_caption_makes_unlikely():
  # Code 2 is unlikely given the caption but far less likely without it, so
  # plain guidance makes it the top code; the plausibility floor removes it.
  cond = jnp.log(jnp.asarray([[0.6, 0.35, 0.01, 0.04]]))
  uncond = jnp.log(jnp.asarray([[0.5, 0.3, 0.0001, 0.1999]]))
  logits = jnp.concatenate([cond, uncond])
  mix = lambda **kw: np.asarray(sampler.next_token_logits(  # noqa: E731
      logits, 1, True, SamplingOptions(cfg_scale=3.0, **kw), 0, 4))
  assert mix().argmax() == 2
  floored = mix(plausibility=0.1)
  assert floored.argmax() == 0 and np.isinf(floored[0, [2, 3]]).all()
  np.testing.assert_allclose(floored[0, :2], mix()[0, :2])


@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_sampled_codes_are_plausible_given_the_caption(tiny, cfg_scale):
  """Every drawn code has p(code | caption, earlier codes) >= a * the top code's."""
  a = 0.2

  def log_ratio_to_top(tokens):
    """log p(code | caption, earlier codes) - log max p(. | ...), teacher-forced."""
    logits = tiny["model"].apply({"params": tiny["params"]}, tiny["text"], jnp.asarray(tokens),
                                 train=False)
    log_probs = np.asarray(jax.nn.log_softmax(logits, axis=-1))
    chosen = np.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0]
    return chosen - log_probs.max(-1)

  floored = _run(tiny, SamplingOptions(temperature=20.0, cfg_scale=cfg_scale, plausibility=a),
                 seed=2)
  assert (log_ratio_to_top(floored) >= np.log(a) - 1e-5).all()
  # The floor binds: without it the hot sampler draws implausible codes.
  free = _run(tiny, SamplingOptions(temperature=20.0, cfg_scale=cfg_scale), seed=2)
  assert (log_ratio_to_top(free) < np.log(a)).mean() > 0.5


@pytest.mark.parametrize("kwargs,message", [
    (dict(top_p=0.0), "top-p must be in \\(0, 1\\]"),
    (dict(top_p=1.5), "top-p must be in \\(0, 1\\]"),
    (dict(top_k=-1), "top-k must be a non-negative integer"),
    (dict(unroll=0), "unroll must be a positive integer"),
    (dict(cache_chunks=0), "cache chunks must be a positive integer"),
    (dict(temperature=-1.0), "temperature must be >= 0"),
    (dict(cfg_schedule="cosine"), "cfg schedule must be one of"),
    (dict(plausibility=1.0), "plausibility must be in \\[0, 1\\)"),
    (dict(plausibility=-0.1), "plausibility must be in \\[0, 1\\)"),
])
def test_invalid_options(kwargs, message):
  with pytest.raises(UserError, match=message):
    SamplingOptions(**kwargs).validate()


# ---- speculative Jacobi decoding ------------------------------------------------

def _jacobi(tiny, options, *, seed=0, text=None, **kw):
  text = tiny["text"] if text is None else text
  fn = jax.jit(functools.partial(sampler.sample_tokens_jacobi, tiny["model"], options=options,
                                 empty_caption=tiny["empty"], **kw))
  tokens, calls = fn(tiny["params"], text, sampler.image_keys(seed, 0, text.shape[0]))
  return np.asarray(tokens), int(calls)


@pytest.mark.parametrize("options", [
    SamplingOptions(temperature=0.0, decoding="jacobi", draft_len=4),
    SamplingOptions(temperature=0.0, decoding="jacobi", draft_len=16),  # the whole image
    SamplingOptions(temperature=0.0, decoding="jacobi", draft_len=5, cfg_scale=3.0,
                    cfg_schedule="linear", plausibility=0.1),
])
def test_greedy_jacobi_equals_greedy_ar(tiny, options):
  tokens, calls = _jacobi(tiny, options)
  np.testing.assert_array_equal(tokens, _run(tiny, options))
  # Every call fixes at least one token; a whole-image window needs more than one call.
  assert 1 < calls <= tiny["spec"].num_image_tokens


def test_jacobi_samples_the_ar_distribution():
  """Chi-square of 6000 Jacobi draws of the first three tokens (64 cells) against
  their exact AR probabilities, with guidance, top-k and the plausibility floor."""
  from scipy import stats
  from vlgen_jax.model.spec import ModelSpec as Spec
  spec = Spec(text_vocab_size=32, text_length=4, text_pad_id=0, image_vocab_size=4,
              image_grid=(2, 3), d_model=16, num_heads=2, head_dim=8, mlp_dim=32,
              encoder_layers=1, decoder_layers=2, dtype="float32")
  model = Model(spec)
  text = jnp.asarray([[2, 7, 9, 3]], jnp.int32)
  params = sharding.unbox(model.init(jax.random.key(1), text, jnp.zeros((1, 6), jnp.int32))["params"])
  empty = np.asarray([2, 3, 0, 0], np.int32)
  options = SamplingOptions(temperature=1.0, top_k=3, cfg_scale=1.5, plausibility=0.05,
                            decoding="jacobi", draft_len=4)
  draws = 6000
  fn = jax.jit(functools.partial(sampler.sample_tokens_jacobi, model, options=options,
                                 empty_caption=empty))
  tokens, calls = fn(params, jnp.repeat(text, draws, axis=0), sampler.image_keys(0, 0, draws))
  tokens = np.asarray(tokens)
  assert int(calls) <= 6
  # Exact AR probabilities of (t0, t1, t2), teacher-forced through the full forward.
  grid = np.stack(np.meshgrid(*[np.arange(4)] * 3, indexing="ij"), -1).reshape(-1, 3)
  seqs = jnp.asarray(np.concatenate([grid, np.zeros((64, 3), np.int64)], 1), jnp.int32)
  both = jnp.concatenate([jnp.repeat(text, 64, 0), jnp.repeat(jnp.asarray(empty)[None], 64, 0)])
  logits = model.apply({"params": params}, both, jnp.concatenate([seqs, seqs]))
  probs = np.ones(64)
  for t in range(3):
    mixed = sampler.next_token_logits(logits[:, t], 64, True, options, t, 6)
    probs *= np.asarray(sampler.token_probs(mixed, options))[np.arange(64), grid[:, t]]
  np.testing.assert_allclose(probs.sum(), 1.0, atol=1e-5)
  observed = np.bincount(tokens[:, 0] * 16 + tokens[:, 1] * 4 + tokens[:, 2], minlength=64)
  assert observed[probs == 0].sum() == 0  # filtered codes are never drawn
  cells = probs * draws >= 5
  assert cells.sum() >= 10
  expected = probs[cells] * draws
  chi2 = (((observed[cells] - expected) ** 2) / expected).sum()
  chi2 += ((observed[~cells].sum() - probs[~cells].sum() * draws) ** 2 /
           max(probs[~cells].sum() * draws, 1e-9))
  print(f"chi2 {chi2:.1f} over {int(cells.sum()) + 1} cells")
  assert chi2 < stats.chi2.ppf(0.999, int(cells.sum())), (chi2, int(cells.sum()))


def test_sharded_jacobi_equals_single_device(tiny):
  from vlgen_jax.train import mesh as mesh_lib
  config = tiny["config"]
  opts = SamplingOptions(temperature=1.0, top_k=16, cfg_scale=2.0, decoding="jacobi", draft_len=6)
  text = jnp.concatenate([tiny["text"], tiny["text"][:2]])  # 8 rows
  expected, _ = _jacobi(tiny, opts, seed=9, text=text)
  config.mesh.update(data=4, fsdp=1, tensor=2)
  mesh = mesh_lib.create_mesh(config)
  rules = sharding.logical_axis_rules(config)
  shardings = sharding.logical_to_shardings(sharding.logical_specs(tiny["boxed"]), mesh, rules)
  fn = sampler.make_sampler(tiny["model"], opts, empty_caption=tiny["empty"], mesh=mesh,
                            param_shardings=shardings, logical_axis_rules=rules)
  got = fn(jax.device_put(tiny["params"], shardings), text, sampler.image_keys(9, 0, 8))
  np.testing.assert_array_equal(np.asarray(got), expected)
