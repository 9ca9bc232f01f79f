"""Image-code embeddings tied to code appearance (model.code_embedding="appearance")."""
from __future__ import annotations

import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlgen_jax import cli
from vlgen_jax.config import load_config
from vlgen_jax.data.token_records import read_code_appearance
from vlgen_jax.errors import UserError
from vlgen_jax.model import code_embedding
from vlgen_jax.model.spec import ModelSpec
from vlgen_jax.train import checkpoint
from trainer_helpers import demo_t2i_args

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = dict(text_vocab_size=100, text_length=8, text_pad_id=0, image_vocab_size=10,
            image_grid=(2, 2), d_model=16, num_heads=2, head_dim=8, mlp_dim=32,
            encoder_layers=1, decoder_layers=1, dtype="float32",
            code_embedding="appearance", code_feature_dim=6)


def _codes():
  spec = ModelSpec(**SPEC)
  spec.validate()
  module = code_embedding.AppearanceCodes(spec)
  both = lambda m, t, x: (m.embed(t), m.logits(x))  # noqa: E731
  tokens = jnp.arange(spec.image_vocab_padded)[None]
  x = jax.random.normal(jax.random.key(1), (2, 3, spec.d_model))
  params = module.init(jax.random.key(0), tokens, x, method=both)["params"]
  features = np.random.default_rng(0).uniform(size=(10, 6)).astype(np.float32)
  features[4] = features[3]  # two codes that look the same
  params = code_embedding.set_features(flax.core.meta.unbox(params), features)
  return spec, module, both, params, tokens, x, features


def test_logits_and_embeddings_are_linear_maps_of_the_features():
  spec, module, both, params, tokens, x, features = _codes()
  params["logit_bias"] = jnp.arange(10, dtype=jnp.float32) / 10
  embedded, logits = module.apply({"params": params}, tokens, x, method=both)
  centred = features - features.mean(0)
  w = centred @ np.asarray(params["logit_proj"]["kernel"])
  expect = np.einsum("btd,kd->btk", x, w) * 4.0 / np.sqrt(16) + np.arange(10) / 10
  assert logits.shape == (2, 3, spec.image_vocab_padded)
  np.testing.assert_allclose(logits[..., :10], expect, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(logits[..., 10:], 0.0)  # the decoder masks these
  # Look-alike codes differ only by their bias; embeddings are equal.
  np.testing.assert_allclose(logits[..., 4] - logits[..., 3], 0.1, atol=1e-5)
  np.testing.assert_array_equal(embedded[0, 3], embedded[0, 4])
  np.testing.assert_allclose(embedded[0, :10], centred @ np.asarray(params["embed_proj"]["kernel"]),
                             rtol=1e-5, atol=1e-5)
  # BOS and padding ids get learned rows.
  np.testing.assert_array_equal(embedded[0, 10:], params["special_embed"])


def test_features_get_no_gradient():
  _, module, both, params, tokens, x, _ = _codes()

  def loss(p):
    e, l = module.apply({"params": p}, tokens, x, method=both)
    return jnp.sum(e ** 2) + jnp.sum(jax.nn.log_softmax(l[..., :10]))
  grads = jax.grad(loss)(params)
  np.testing.assert_array_equal(grads[code_embedding.FEATURES], 0.0)
  assert float(jnp.abs(grads["logit_proj"]["kernel"]).max()) > 0
  mask = code_embedding.features_mask(params)
  assert mask[code_embedding.FEATURES] and not mask["logit_proj"]["kernel"]


def test_appearance_needs_a_feature_dim():
  with pytest.raises(UserError, match="code_feature_dim"):
    ModelSpec(**{**SPEC, "code_feature_dim": 0}).validate()
  with pytest.raises(UserError, match="code_embedding must be one of"):
    ModelSpec(**{**SPEC, "code_embedding": "pixels"}).validate()


def _t2i_args(demo, workdir, *extra):
  return demo_t2i_args(demo, workdir, "--config.model.code_embedding=appearance", *extra)


def test_training_sets_features_from_the_token_dataset_and_never_moves_them(demo_tiny_dir,
                                                                            tmp_path):
  from vlgen_jax.sample.generator import Generator
  from vlgen_jax.sample.sampler import SamplingOptions
  workdir = tmp_path / "t2i"
  assert cli.main(_t2i_args(demo_tiny_dir, workdir, "--config.model.code_feature_dim=192",
                            "--config.total_steps=3", "--config.checkpoint_every=1",
                            "--config.sample_eval.num=0")) == 0
  mean, count = read_code_appearance(str(demo_tiny_dir / "tokens"))
  assert mean.shape == (16, 192) and count.sum() > 0
  first, last = (checkpoint.load_params(str(workdir), s) for s in (1, 3))
  path = ("decoder", "codes", code_embedding.FEATURES)
  get = lambda p: np.asarray(p[path[0]][path[1]][path[2]])  # noqa: E731
  np.testing.assert_array_equal(get(first), mean)
  np.testing.assert_array_equal(get(last), mean)
  # The projections do train.
  assert not np.array_equal(first["decoder"]["codes"]["logit_proj"]["kernel"],
                            last["decoder"]["codes"]["logit_proj"]["kernel"])
  # The export samples on its own (features travel in the params).
  gen = Generator.load(str(workdir))
  images, _ = gen.generate(["a large red circle in the center"] * 2,
                           SamplingOptions(temperature=1.0), seed=0, batch_size=2)
  assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8


def test_wrong_feature_dim_or_no_token_features_are_one_line_errors(demo_tiny_dir, tmp_path,
                                                                     capsys):
  rc = cli.main(_t2i_args(demo_tiny_dir, tmp_path / "a", "--config.model.code_feature_dim=48",
                          "--config.total_steps=1"))
  err = capsys.readouterr().err.strip()
  assert rc == 2 and "code_feature_dim" in err and "(16, 48)" in err and "\n" not in err
  tokens = tmp_path / "tokens"
  tokens.mkdir()
  for f in (demo_tiny_dir / "tokens").iterdir():
    if f.name != "code_appearance.npz":
      (tokens / f.name).write_bytes(f.read_bytes())
  rc = cli.main(_t2i_args(demo_tiny_dir, tmp_path / "b", "--config.model.code_feature_dim=192",
                          "--config.total_steps=1", f"--config.data.data_dir={tokens}"))
  err = capsys.readouterr().err.strip()
  assert rc == 2 and "re-run vlgen encode" in err and "\n" not in err


def _assert_sharded_losses_equal(args, tmp_path):
  """Trains `vlgen train` args (3 steps) on one device and on data x fsdp x
  tensor = 2x2x2; the losses must match. Returns the config."""
  from trainer_helpers import train_losses
  from vlgen_jax.train.trainer import train
  config_path, overrides = args[args.index("--config") + 1], args[args.index("--workdir") + 2:]
  losses = {}
  for name, mesh, devices in (("one", (1, 1, 1), jax.devices()[:1]),
                              ("mesh", (2, 2, 2), jax.devices())):
    config = load_config(config_path, overrides + [
        f"--config.mesh.data={mesh[0]}", f"--config.mesh.fsdp={mesh[1]}",
        f"--config.mesh.tensor={mesh[2]}"])
    train(config, str(tmp_path / name), devices=devices)
    losses[name] = train_losses(tmp_path / name)
  assert sorted(losses["one"]) == [1, 2, 3]
  np.testing.assert_allclose([losses["mesh"][s] for s in (1, 2, 3)],
                             [losses["one"][s] for s in (1, 2, 3)], rtol=2e-5)
  return config


def test_sharded_training_equals_single_device(demo_tiny_dir, tmp_path):
  """data x fsdp x tensor = 2x2x2 gives the single-device losses: the frozen
  features and projections shard like any other params."""
  args = _t2i_args(demo_tiny_dir, tmp_path, "--config.model.code_feature_dim=192",
                   "--config.total_steps=3", "--config.checkpoint_every=0",
                   "--config.log_every=1", "--config.sample_eval.num=0")
  _assert_sharded_losses_equal(args, tmp_path)


# ---- code_embedding="decoded" (the captioner's image encoder) ----------------

def _decoded():
  from vlgen_jax.vq.model import VQConfig, VQModel
  vq = VQConfig(ch=8, ch_mult=(1,), num_res_blocks=1, z_channels=8, norm_groups=4, patch_size=4,
                num_mid_blocks=0, num_codes=10, code_dim=4)
  spec = ModelSpec(**{**SPEC, "code_embedding": "decoded", "code_feature_dim": 0})
  spec.validate()
  module = code_embedding.DecodedCodes(spec, vq)
  tokens = jnp.asarray([[1, 2, 3, 4], [9, 0, 5, 5]], jnp.int32)
  params = flax.core.meta.unbox(module.init(jax.random.key(0), tokens,
                                            method=code_embedding.DecodedCodes.embed)["params"])
  # A VQ "run" with other weights than init: set_frozen_vq must copy them in.
  vq_params = flax.core.meta.unbox(VQModel(vq).init(jax.random.key(3), jnp.zeros((1, 8, 8, 3)))
                                   ["params"])
  return spec, vq, module, code_embedding.set_frozen_vq(params, vq_params), vq_params, tokens


def test_decoded_embeds_each_position_through_the_vq_rendering_of_the_grid():
  from vlgen_jax.vq.model import VQModel, space_to_depth
  spec, vq, module, params, vq_params, tokens = _decoded()
  embed = lambda p, t: module.apply({"params": p}, t, method=module.embed)  # noqa: E731
  out = embed(params, tokens)
  pixels = VQModel(vq).apply({"params": vq_params}, tokens.reshape(2, 2, 2),
                             method=VQModel.decode_indices)
  patches = (np.clip(space_to_depth(pixels, 4).reshape(2, 4, 48), -1, 1) + 1) / 2
  np.testing.assert_allclose(out, patches @ np.asarray(params["embed_proj"]["kernel"]),
                             rtol=1e-5, atol=1e-5)
  # Contextual: one code changed changes its neighbours' embeddings (3x3 convs).
  other = embed(params, tokens.at[0, 1].set(7))
  assert float(jnp.abs(other[0, 0] - out[0, 0]).max()) > 1e-4
  # The "no image" id (image_vocab_size) gets a learned row at every position.
  null = embed(params, jnp.full((1, 4), spec.image_vocab_size, jnp.int32))
  np.testing.assert_array_equal(null[0], np.broadcast_to(params["special_embed"][0], (4, 16)))


def test_decoded_vq_gets_no_gradient_and_is_frozen():
  _, _, module, params, _, tokens = _decoded()
  grads = jax.grad(lambda p: jnp.sum(module.apply({"params": p}, tokens,
                                                   method=module.embed) ** 2))(params)
  vq_grads = jax.tree.leaves(grads[code_embedding.FROZEN_VQ])
  assert vq_grads and all(float(jnp.abs(g).max()) == 0 for g in vq_grads)
  assert float(jnp.abs(grads["embed_proj"]["kernel"]).max()) > 0
  mask = code_embedding.features_mask(params)
  assert all(jax.tree.leaves(mask[code_embedding.FROZEN_VQ]))
  assert not mask["embed_proj"]["kernel"] and not mask["special_embed"]


def _caption_args(demo, workdir, *extra):
  from vlgen_jax.config import load_config
  recipe = load_config(os.path.join(REPO_ROOT, "configs", "demo_tiny.py"), [])
  return ["train", "--config", os.path.join(REPO_ROOT, "configs", "caption_shapes.py"),
          "--workdir", str(workdir), f"--config.data.data_dir={demo / 'tokens'}",
          f"--config.data.tokenizer={demo / 'text_tokenizer.model'}",
          *[f"--config.{o}" for o in recipe.caption.overrides], *extra]


def test_decoded_captioner_trains_with_the_token_datasets_vq_frozen(demo_tiny_dir, tmp_path):
  from vlgen_jax.sample.captioner import Captioner
  from vlgen_jax.shapes.captioning import shapes_split
  from vlgen_jax.tasks.caption import load_vq_params
  workdir = tmp_path / "caption"
  assert cli.main(_caption_args(demo_tiny_dir, workdir, "--config.model.code_embedding=decoded",
                                "--config.total_steps=3", "--config.checkpoint_every=1")) == 0
  vq = load_vq_params(str(demo_tiny_dir / "vq"), None)
  first, last = (checkpoint.load_params(str(workdir), s) for s in (1, 3))
  for params in (first, last):
    frozen = params["encoder"]["codes"][code_embedding.FROZEN_VQ]
    assert set(frozen) == {"quantizer", "post_quant_conv", "decoder", "to_rgb"}
    jax.tree.map(np.testing.assert_array_equal, frozen,
                 {k: vq[k] for k in frozen})
  assert not np.array_equal(first["encoder"]["codes"]["embed_proj"]["kernel"],
                            last["encoder"]["codes"]["embed_proj"]["kernel"])
  captioner = Captioner.load(str(workdir))
  images, _ = shapes_split("validation", 3, captioner.vq.resolution)
  captions, scores = captioner.caption(captioner.encode_images(images))
  assert len(captions) == 3 and np.all(np.isfinite(scores))


def test_decoded_needs_a_token_dataset_and_is_the_captioners_only(demo_tiny_dir, tmp_path, capsys):
  rc = cli.main(demo_t2i_args(demo_tiny_dir, tmp_path / "t2i",
                              "--config.model.code_embedding=decoded", "--config.total_steps=1"))
  err = capsys.readouterr().err.strip()
  assert rc == 2 and "code_embedding='decoded'" in err and "\n" not in err
  rc = cli.main(["train", "--config", os.path.join(REPO_ROOT, "configs", "caption_tiny.py"),
                 "--workdir", str(tmp_path / "synthetic"), "--config.model.code_embedding=decoded",
                 "--config.total_steps=1"])
  err = capsys.readouterr().err.strip()
  assert rc == 2 and "vlgen encode" in err and "\n" not in err


def test_decoded_captioner_sharded_training_equals_single_device(demo_tiny_dir, tmp_path):
  """data x fsdp x tensor = 2x2x2 gives the single-device losses with the
  frozen VQ inside the captioner's params."""
  args = _caption_args(demo_tiny_dir, tmp_path, "--config.total_steps=3",
                       "--config.checkpoint_every=0", "--config.log_every=1")
  config = _assert_sharded_losses_equal(args, tmp_path)
  assert config.model.code_embedding == "decoded"
