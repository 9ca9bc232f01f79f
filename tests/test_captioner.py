"""The captioner's decode API and the caption library: cached step-by-step
logits equal the full forward, cached greedy/beam search equals the same
search by full recompute, captions do not depend on batch composition, and a
caption's score is its summed teacher-forced log-probs (over its length)."""
import functools

import flax.linen as nn
import jax
import numpy as np
import pytest

from vlgen_jax.model import captioner, code_embedding
from vlgen_jax.model.captioner import Model
from vlgen_jax.model.spec import ModelSpec
from vlgen_jax.sample import captioner as lib
from vlgen_jax.text.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from vlgen_jax.vq.model import VQConfig

# A small text vocabulary (28 real ids) so random-init captions end early and
# beams compete over a handful of ids.
BASE = dict(text_vocab_size=28, text_length=7, text_pad_id=0, image_vocab_size=40,
            image_grid=(3, 4), d_model=32, num_heads=4, head_dim=8, mlp_dim=64,
            encoder_layers=2, decoder_layers=2, dtype="float32")
VARIANTS = {
    "learned": dict(image_positions="learned_2d", text_positions="learned"),
    "rope_appearance": dict(image_positions="rope_2d", text_positions="rope", qk_norm=True,
                            code_embedding="appearance", code_feature_dim=12),
    "decoded": dict(code_embedding="decoded"),
}
# The VQ that renders the grid for code_embedding="decoded" (random weights).
TINY_VQ = VQConfig(ch=8, ch_mult=(1,), num_res_blocks=1, z_channels=8, norm_groups=4,
                   patch_size=4, num_mid_blocks=0, num_codes=40, code_dim=4)


def _text():
  """Captions of 2 and 4 pieces (padded) and of 5 pieces (no padding)."""
  text = np.random.default_rng(1).integers(4, 28, (3, 7)).astype(np.int32)
  text[:, 0], text[:, -1] = BOS_ID, EOS_ID
  text[0, 3], text[0, 4:] = EOS_ID, PAD_ID
  text[1, 5], text[1, 6:] = EOS_ID, PAD_ID
  return text


def _images(n, seed=0):
  return np.random.default_rng(seed).integers(0, 40, (n, 12)).astype(np.int32)


@functools.lru_cache(maxsize=None)
def _setup(variant: str):
  spec = ModelSpec(**BASE, **VARIANTS[variant])
  spec.validate()
  model = Model(spec, TINY_VQ if spec.code_embedding == "decoded" else None)
  params = jax.jit(model.init)(jax.random.key(0), _images(3), _text())["params"]
  if spec.code_embedding == "appearance":
    features = np.random.default_rng(2).uniform(size=(40, 12)).astype(np.float32)
    params = code_embedding.set_features(params, features)
  # Sharper than init so beams and greedy disagree on some images.
  params = jax.device_get(nn.unbox(params))
  params["decoder"]["logits"]["kernel"] = params["decoder"]["logits"]["kernel"] * 4
  return spec, model, params


def _teacher_forced_log_probs(model, params, images, text):
  """Per-position log p(text[:, t+1] | image, text[:, :t+1]) through the decode cache."""
  v = {"params": params}
  encoded, mask = model.apply(v, images, method=Model.encode_image)
  cache = model.apply(v, encoded, mask, method=Model.init_cache)
  step = jax.jit(lambda tok, t, c: model.apply(v, tok, t, c, method=Model.decode_step))
  out, logits_steps = [], []
  for t in range(text.shape[1] - 1):
    logits, cache = step(text[:, t], t, cache)
    logits_steps.append(logits)
    lp = jax.nn.log_softmax(logits, axis=-1)
    out.append(np.asarray(lp)[np.arange(len(text)), text[:, t + 1]])
  return np.stack(out, axis=1), np.stack(logits_steps, axis=1)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_cached_decode_steps_equal_full_forward(variant):
  spec, model, params = _setup(variant)
  images, text = _images(3), _text()
  full = model.apply({"params": params}, images, text)
  _, steps = _teacher_forced_log_probs(model, params, images, text)
  assert full.shape == (3, spec.text_length - 1, spec.text_vocab_padded)
  np.testing.assert_allclose(steps, full, rtol=1e-5, atol=1e-4)
  # PAD, BOS and vocabulary padding are never predicted.
  assert np.all(np.asarray(full)[..., [PAD_ID, BOS_ID]] < -1e8)
  assert np.all(np.asarray(full)[..., 28:] < -1e8)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_score_is_length_normalised_sum_of_teacher_forced_log_probs(variant):
  spec, model, params = _setup(variant)
  images, text = _images(3), _text()
  lp, _ = _teacher_forced_log_probs(model, params, images, text)
  real = text[:, 1:] != PAD_ID
  want = np.sum(np.where(real, lp, 0.0), axis=1) / real.sum(axis=1)
  got = lib.make_scorer(model)(params, images, text)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # PMI divides out the caption prior: the same sum with the "no image" input.
  null = np.full_like(images, captioner.null_image_id(spec))
  lp0, _ = _teacher_forced_log_probs(model, params, null, text)
  want_pmi = want - np.sum(np.where(real, lp0, 0.0), axis=1) / real.sum(axis=1)
  np.testing.assert_allclose(lib.make_scorer(model, pmi=True)(params, images, text), want_pmi,
                             rtol=1e-4, atol=1e-5)
  # Every image against every caption: the diagonal is the pairwise score.
  matrix = lib.make_candidate_scorer(model, pmi=True)(params, images,
                                                      np.broadcast_to(text, (3, *text.shape)))
  assert matrix.shape == (3, 3)
  np.testing.assert_allclose(np.diag(matrix), want_pmi, rtol=1e-4, atol=1e-5)
  swapped = lib.make_scorer(model, pmi=True)(params, images[::-1], text)
  np.testing.assert_allclose(np.diag(matrix[::-1]), swapped, rtol=1e-4, atol=1e-5)


def test_pmi_guided_search_equals_full_recompute():
  _, model, params = _setup("learned")
  images = _images(6, seed=3)
  guide = dict(beam_size=2, pmi_weight=1.0, plausibility=0.05)
  tokens, scores = lib.make_captioner(model, **guide)(params, images)
  ref_tokens, ref_scores = lib.make_captioner(model, cached=False, **guide)(params, images)
  np.testing.assert_array_equal(tokens, ref_tokens)
  np.testing.assert_allclose(scores, ref_scores, rtol=1e-5)
  plain, _ = lib.make_captioner(model, beam_size=2)(params, images)
  assert not np.array_equal(tokens, plain)  # the prior changed some captions


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("beam", [1, 3])
def test_cached_search_equals_full_recompute(variant, beam):
  spec, model, params = _setup(variant)
  images = _images(6, seed=3)
  tokens, scores = lib.make_captioner(model, beam_size=beam)(params, images)
  ref_tokens, ref_scores = lib.make_captioner(model, beam_size=beam, cached=False)(params, images)
  np.testing.assert_array_equal(tokens, ref_tokens)
  np.testing.assert_allclose(scores, ref_scores, rtol=1e-5)
  tokens = np.asarray(tokens)
  assert tokens.shape == (6, spec.text_length)
  for row in tokens:  # BOS pieces... EOS PAD...: a valid encoding
    assert row[0] == BOS_ID and list(row).count(EOS_ID) == 1
    end = list(row).index(EOS_ID)
    assert np.all(row[end + 1:] == PAD_ID) and not set(row[1:end]) & {PAD_ID, BOS_ID, EOS_ID}
  # The kept beam's score is the caption's score.
  np.testing.assert_allclose(lib.make_scorer(model)(params, images, tokens), scores, rtol=1e-5)


def test_beam_search_finds_captions_at_least_as_likely_as_greedy():
  _, model, params = _setup("learned")
  images = _images(16, seed=4)
  _, greedy = lib.make_captioner(model, beam_size=1)(params, images)
  _, beam = lib.make_captioner(model, beam_size=4)(params, images)
  assert np.all(np.asarray(beam) >= np.asarray(greedy) - 1e-6)
  assert np.any(np.asarray(beam) > np.asarray(greedy) + 1e-4)  # and better on some


@pytest.mark.parametrize("variant,beam", [("learned", 1), ("learned", 3), ("decoded", 1)])
def test_captions_do_not_depend_on_batch_composition(variant, beam):
  _, model, params = _setup(variant)
  images = _images(8, seed=5)
  fn = lib.make_captioner(model, beam_size=beam)
  tokens, scores = fn(params, images[:4])
  # The same images at other rows, among other images.
  mixed = np.stack([images[6], images[2], images[0], images[5]])
  tokens2, scores2 = fn(params, mixed)
  np.testing.assert_array_equal(np.asarray(tokens2)[[2, 1]], np.asarray(tokens)[[0, 2]])
  np.testing.assert_allclose(np.asarray(scores2)[[2, 1]], np.asarray(scores)[[0, 2]], rtol=1e-6)


@pytest.mark.parametrize("guide", [dict(beam_size=1), dict(beam_size=3),
                                   dict(beam_size=2, pmi_weight=1.0, plausibility=0.05)])
def test_mask_previous_search_equals_full_recompute(guide):
  _, model, params = _setup("learned")
  images = _images(6, seed=3)
  tokens, scores = lib.make_captioner(model, mask_previous=True, **guide)(params, images)
  ref_tokens, ref_scores = lib.make_captioner(model, cached=False, mask_previous=True,
                                              **guide)(params, images)
  np.testing.assert_array_equal(tokens, ref_tokens)
  np.testing.assert_allclose(scores, ref_scores, rtol=1e-5)


def test_mask_previous_greedy_reads_each_piece_with_the_one_before_hidden():
  """Each piece of the greedy caption is the argmax of the full forward with
  that step's input piece replaced by UNK (BOS kept); the score is the mean
  of those log-probs. Some captions differ from plain greedy."""
  spec, model, params = _setup("learned")
  images = _images(16, seed=6)
  tokens, scores = lib.make_captioner(model, mask_previous=True)(params, images)
  tokens = np.asarray(tokens)
  total, count = np.zeros(len(images)), np.zeros(len(images))
  for t in range(spec.text_length - 1):
    inputs = tokens.copy()
    if t > 0:
      inputs[:, t] = UNK_ID
    logits = np.array(model.apply({"params": params}, images, inputs))[:, t]
    lp = np.asarray(jax.nn.log_softmax(logits, axis=-1))
    if t == spec.text_length - 2:  # the last position can only close the caption
      logits[:, np.arange(logits.shape[1]) != EOS_ID] = -np.inf
    open_rows = ~np.any(tokens[:, 1:t + 1] == EOS_ID, axis=1)
    np.testing.assert_array_equal(logits[open_rows].argmax(-1), tokens[open_rows, t + 1])
    total += np.where(open_rows, lp[np.arange(len(images)), tokens[:, t + 1]], 0.0)
    count += open_rows
  np.testing.assert_allclose(scores, total / count, rtol=1e-5)
  plain, _ = lib.make_captioner(model)(params, images)
  assert not np.array_equal(tokens, np.asarray(plain))


def test_mask_previous_needs_a_captioner_trained_with_word_dropout():
  import ml_collections

  from vlgen_jax.errors import UserError
  _, model, params = _setup("learned")
  config = ml_collections.ConfigDict({"model": {"word_dropout": 0.0}})
  run = lib.Captioner(run="RUN", config=config, model=model, params=params, tokenizer=None,
                      vq_run="VQ")
  with pytest.raises(UserError, match="word_dropout > 0; RUN was trained without"):
    run.caption(_images(2), mask_previous=True)
