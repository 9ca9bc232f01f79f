"""Cached step-by-step decoding equals the full forward; greedy sampling through the
decode API is consistent with it."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlgen_jax.model import code_embedding
from vlgen_jax.model.image_decoder import MASKED_LOGIT
from vlgen_jax.model.spec import ModelSpec
from vlgen_jax.model.t2i import Model, decoder_inputs
from vlgen_jax.sample.sampler import (SamplingOptions, first_chunks, make_sampler, merge_chunks,
                                     split_cache)

BASE = dict(text_vocab_size=100, text_length=8, text_pad_id=0, image_vocab_size=50,
            image_grid=(3, 4), d_model=32, num_heads=4, head_dim=8, mlp_dim=64,
            encoder_layers=2, decoder_layers=2, dtype="float32")
VARIANTS = {
    "learned": dict(image_positions="learned_2d", text_positions="learned"),
    "rope": dict(image_positions="rope_2d", text_positions="rope", qk_norm=True,
                 norm="layernorm", mlp="swiglu"),
    "appearance": dict(code_embedding="appearance", code_feature_dim=12),
}


def _text():
  """Captions of 3 and 5 ids (padded) and of 8 ids (no padding)."""
  text = np.random.default_rng(1).integers(4, 100, (3, 8)).astype(np.int32)
  text[:, 0], text[:, -1] = 2, 3
  text[0, 2], text[0, 3:] = 3, 0
  text[1, 4], text[1, 5:] = 3, 0
  return text


@functools.lru_cache(maxsize=None)
def _setup(variant: str):
  """Model, params and jitted entry points, compiled once per variant."""
  spec = ModelSpec(**BASE, **VARIANTS[variant])
  spec.validate()
  model = Model(spec)
  text = _text()
  params = jax.jit(model.init)(jax.random.key(0), text, np.zeros((3, 12), np.int32))["params"]
  if spec.code_embedding == "appearance":
    features = np.random.default_rng(2).uniform(size=(50, 12)).astype(np.float32)
    params = code_embedding.set_features(params, features)
  fns = {
      "forward": jax.jit(lambda p, t, i: model.apply({"params": p}, t, i)),
      "encode": jax.jit(lambda p, t: model.apply({"params": p}, t, method=Model.encode_text)),
      "init_cache": jax.jit(lambda p, e, m: model.apply({"params": p}, e, m,
                                                        method=Model.init_cache)),
      "step": jax.jit(lambda p, t, pos, c: model.apply({"params": p}, t, pos, c,
                                                       method=Model.decode_step),
                      donate_argnums=3),  # the cache is updated in place
      "window": jax.jit(lambda p, t, start, c: model.apply({"params": p}, t, start, c,
                                                           method=Model.decode_window),
                        donate_argnums=3),
      "greedy": make_sampler(model, SamplingOptions(temperature=0.0)),
  }
  return model, params, fns


def _teacher_forced(variant: str, seed: int):
  """(model, params, fns, text, decoder inputs, full-forward logits of the real
  codes) for 12 random codes per caption."""
  model, params, fns = _setup(variant)
  k = model.spec.image_vocab_size
  text = _text()
  tokens = np.random.default_rng(seed).integers(0, k, (3, 12)).astype(np.int32)
  full = np.asarray(fns["forward"](params, text, tokens))[..., :k]
  inputs = np.asarray(decoder_inputs(jnp.asarray(tokens), model.spec.image_bos_id))
  return model, params, fns, text, inputs, full


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_cached_decode_equals_full_forward(variant):
  model, params, fns = _setup(variant)
  k = model.spec.image_vocab_size
  text = _text()
  tokens = np.random.default_rng(2).integers(0, k, (3, 12)).astype(np.int32)
  full = np.asarray(fns["forward"](params, text, tokens))

  encoded, mask = fns["encode"](params, text)
  cache = fns["init_cache"](params, encoded, mask)
  cross_k = np.asarray(cache["cross_k"])
  inputs = np.asarray(decoder_inputs(jnp.asarray(tokens), model.spec.image_bos_id))
  steps = []
  for position in range(12):
    logits, cache = fns["step"](params, inputs[:, position], jnp.int32(position), cache)
    steps.append(np.asarray(logits))
  stepped = np.stack(steps, axis=1)
  # Cross-attention K/V were computed once and passed through untouched.
  np.testing.assert_array_equal(np.asarray(cache["cross_k"]), cross_k)

  assert full.shape == stepped.shape == (3, 12, model.spec.image_vocab_padded)
  real = full[..., :k]
  # Per caption (rows 0-1 padded, row 2 not) and per position.
  rel = np.max(np.abs(stepped[..., :k] - real), axis=2) / np.max(np.abs(real))
  assert np.all(rel <= 1e-5), f"relative error per row and position:\n{rel}"
  # BOS and vocabulary padding are never predicted.
  assert np.all(full[..., k:] == MASKED_LOGIT) and np.all(stepped[..., k:] == MASKED_LOGIT)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("chunks", [2, 4])
def test_chunked_cache_decode_equals_full_forward(variant, chunks):
  """Decoding chunk c against the cache's chunks 0..c only (what the AR
  sampler does: attention reads the filled part of the cache) gives the full
  forward's logits."""
  model, params, fns, text, inputs, full = _teacher_forced(variant, seed=3)
  k = model.spec.image_vocab_size
  cache = split_cache(fns["init_cache"](params, *fns["encode"](params, text)), 12, chunks)
  assert [c.shape[2] for c in cache["self_k"][0]] == [12 // chunks] * chunks
  steps = []
  for position in range(12):
    visible = first_chunks(cache, position // (12 // chunks) + 1)
    logits, visible = fns["step"](params, inputs[:, position], jnp.int32(position), visible)
    cache = merge_chunks(visible, cache)
    steps.append(np.asarray(logits)[:, :k])
  rel = np.max(np.abs(np.stack(steps, axis=1) - full), axis=2) / np.max(np.abs(full))
  assert np.all(rel <= 1e-5), f"relative error per row and position:\n{rel}"


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_decode_params_split_layers_change_no_logit_and_no_draw(variant):
  """`Model.decode_params` (the decoder's stacked layers split once, as
  decode loops pass them) gives the stacked params' step logits, and the
  sampler draws the same tokens with it as without it."""
  model, params, fns = _setup(variant)
  split = model.decode_params(params)
  layers = split["decoder"]["layers"]
  assert sorted(layers) == ["layer_0", "layer_1"]
  stacked_wi = nn.unbox(params["decoder"]["layers"])["mlp"]["wi"]["kernel"]
  np.testing.assert_array_equal(layers["layer_1"]["mlp"]["wi"]["kernel"], stacked_wi[1])
  assert model.decode_params(split)["decoder"]["layers"] is layers  # idempotent
  text = _text()
  tokens = np.random.default_rng(5).integers(0, model.spec.image_vocab_size, (3, 12))
  inputs = np.asarray(decoder_inputs(jnp.asarray(tokens, jnp.int32), model.spec.image_bos_id))
  encoded, mask = fns["encode"](params, text)
  stepped = []
  for p in (params, split):
    cache = fns["init_cache"](params, encoded, mask)
    logits = []
    for position in range(12):
      out, cache = fns["step"](p, inputs[:, position], jnp.int32(position), cache)
      logits.append(np.asarray(out))
    stepped.append(np.stack(logits, axis=1))
  np.testing.assert_allclose(stepped[1], stepped[0], rtol=1e-6, atol=1e-6)

  class StackedModel(Model):
    decode_params = None  # the sampler then passes the stacked params to every step

  options = SamplingOptions(temperature=1.0, top_k=10)
  keys = jax.random.split(jax.random.key(1), 3)
  drawn = make_sampler(model, options)(params, text, keys)
  reference = make_sampler(StackedModel(model.spec), options)(params, text, keys)
  np.testing.assert_array_equal(np.asarray(drawn), np.asarray(reference))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_padding_is_ignored(variant):
  """Fewer trailing pads (text length 6 instead of 8) leave padded captions' logits
  unchanged; cutting a real caption id changes them."""
  model, params, fns = _setup(variant)
  text = _text()
  tokens = np.random.default_rng(3).integers(0, 50, (3, 12)).astype(np.int32)
  a = np.asarray(fns["forward"](params, text, tokens))
  shorter = text[:, :6].copy()  # rows 0-1 lose two pads; row 2 loses two real ids
  shorter[2, 5] = 3
  b = np.asarray(fns["forward"](params, shorter, tokens))
  np.testing.assert_allclose(b[:2], a[:2], rtol=1e-5, atol=1e-5)
  assert np.max(np.abs(b[2] - a[2])) > 1e-3


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_greedy_generation_matches_full_forward_argmax(variant):
  model, params, fns = _setup(variant)
  text = _text()
  tokens = np.asarray(fns["greedy"](params, text, jax.random.split(jax.random.key(0), 3)))
  assert tokens.shape == (3, 12) and tokens.dtype == np.int32
  assert tokens.min() >= 0 and tokens.max() < model.spec.image_vocab_size
  logits = np.asarray(fns["forward"](params, text, tokens))
  np.testing.assert_array_equal(np.argmax(logits, axis=-1), tokens)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_window_decode_with_per_row_starts_equals_full_forward(variant):
  """Jacobi decoding's path: 4 tokens per call, each row from its own start
  (re-running positions already in the cache rewrites the same K/V)."""
  model, params, fns, text, inputs, full = _teacher_forced(variant, seed=4)
  k = model.spec.image_vocab_size
  encoded, mask = fns["encode"](params, text)
  cache = fns["init_cache"](params, encoded, mask)
  rows = np.arange(3)[:, None]
  for starts in ([0, 0, 0], [4, 3, 4], [8, 7, 8], [8, 8, 8]):
    starts = np.asarray(starts, np.int32)
    positions = starts[:, None] + np.arange(4)
    logits, cache = fns["window"](params, inputs[rows, positions], jnp.asarray(starts), cache)
    expected = full[rows, positions]
    rel = np.max(np.abs(np.asarray(logits)[..., :k] - expected)) / np.max(np.abs(full))
    assert rel <= 1e-5, (starts, rel)


def test_cache_is_sharded_by_the_logical_rules():
  from vlgen_jax.config import load_config
  from vlgen_jax.train import mesh as mesh_lib
  from vlgen_jax.train import sharding
  model, params, _ = _setup("learned")
  config = load_config("configs/t2i_tiny.py", [])
  config.mesh.update(data=2, fsdp=2, tensor=2)
  mesh = mesh_lib.create_mesh(config)
  rules = sharding.logical_axis_rules(config)
  text = np.concatenate([_text()] * 4)[:8]

  def init(p, t):
    encoded, mask = model.apply({"params": p}, t, method=Model.encode_text)
    return model.apply({"params": p}, encoded, mask, method=Model.init_cache)

  with sharding.mesh_context(mesh, rules):
    cache = jax.jit(init)(params, text)
  # (batch, heads, length, kv) per layer: rows over data x fsdp, heads over tensor.
  for name in ("self_k", "self_v", "cross_k", "cross_v"):
    assert len(cache[name]) == model.spec.decoder_layers
    for buffer in cache[name]:
      spec = tuple(buffer.sharding.spec)
      assert spec + (None,) * (4 - len(spec)) == (("data", "fsdp"), "tensor", None, None)


def test_int8_decoder_weights_halve_bf16_bytes_and_keep_the_logits():
  from vlgen_jax.sample.quantize import quantize_int8, weight_bytes
  from vlgen_jax.train import sharding
  model, boxed, fns = _setup("learned")
  params = sharding.unbox(boxed)
  quantized = quantize_int8(params)
  kernels = lambda tree: [v for path, v in jax.tree_util.tree_flatten_with_path(  # noqa: E731
      tree["decoder"]["layers"])[0] if "'kernel'" in jax.tree_util.keystr(path)]
  assert all(k.dtype == jnp.int8 for k in kernels(quantized))
  bf16 = sum(k.size * 2 for k in kernels(params))
  assert weight_bytes(kernels(quantized)) * 2 == bf16
  text = _text()
  tokens = np.random.default_rng(5).integers(0, 50, (3, 12)).astype(np.int32)
  full = np.asarray(fns["forward"](params, text, tokens))[..., :50]
  # Same jitted forward, new tree (kernel_scale leaves): a retrace, not new code.
  got = np.asarray(jax.jit(lambda p, t, i: model.apply({"params": p}, t, i))(
      quantized, text, tokens))[..., :50]
  rel = np.max(np.abs(got - full)) / np.max(np.abs(full))
  assert 0 < rel < 0.03, rel
  # The decode path reads the same quantized weights.
  greedy = make_sampler(model, SamplingOptions(temperature=0.0))
  out = np.asarray(greedy(quantized, text, jax.random.split(jax.random.key(0), 3)))
  logits = np.asarray(jax.jit(lambda p, t, i: model.apply({"params": p}, t, i))(
      quantized, text, out))
  np.testing.assert_array_equal(np.argmax(logits, axis=-1), out)
