"""VQ tokenizer model: shapes per factor, quantizer maths, losses, GAN gradients."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vlgen_jax.errors import UserError
from vlgen_jax.vq import losses, perceptual
from vlgen_jax.vq import quantizer as qz
from vlgen_jax.vq.discriminator import PatchDiscriminator
from vlgen_jax.vq.model import VQConfig, VQModel, depth_to_space, space_to_depth


def _tiny(**kw):
  base = dict(ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=8, norm_groups=4,
              num_codes=16, code_dim=4)
  base.update(kw)
  return VQConfig(**base)


@pytest.mark.parametrize("ch_mult,patch,factor,kernel,mid", [
    ((1, 2, 2), 1, 4, 3, 2), ((1, 1, 2, 2), 1, 8, 3, 2), ((1, 1, 2, 2, 2), 1, 16, 3, 1),
    ((1, 2), 4, 8, 1, 0), ((1, 2, 2), 4, 16, 1, 2), ((1,), 4, 4, 3, 0), ((1,), 8, 8, 1, 1)])
def test_encoder_decoder_shapes_per_factor(ch_mult, patch, factor, kernel, mid):
  cfg = _tiny(ch_mult=ch_mult, patch_size=patch, attn=True, encoder_kernel=kernel,
              num_mid_blocks=mid)
  assert cfg.factor == factor
  model = VQModel(cfg)
  x = jnp.zeros((2, 32, 32, 3))
  # Shapes only: eval_shape traces without compiling.
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  rec, idx, aux = jax.eval_shape(model.apply, variables, x)
  assert rec.shape == x.shape and rec.dtype == jnp.float32
  assert idx.shape == (2, 32 // factor, 32 // factor) and idx.dtype == jnp.int32
  assert aux["latents"].shape == (2 * (32 // factor) ** 2, cfg.code_dim)
  # Every param carries logical axis names for the trainer's sharding rules.
  boxed = jax.tree.leaves(variables["params"], is_leaf=lambda v: isinstance(v, nn.Partitioned))
  assert all(isinstance(v, nn.Partitioned) for v in boxed)


def test_forward_is_finite_and_decode_indices_matches():
  cfg = _tiny(ch_mult=(1, 2), patch_size=2, attn=True, num_mid_blocks=1)
  model = VQModel(cfg)
  x = jax.random.uniform(jax.random.PRNGKey(0), (2, 16, 16, 3), minval=-1, maxval=1)
  variables = jax.jit(model.init)(jax.random.PRNGKey(1), x)

  @jax.jit
  def run(v, x):
    rec, idx, _ = model.apply(v, x)
    return rec, idx, model.apply(v, idx, method=VQModel.decode_indices)

  rec, idx, rec_from_idx = run(variables, x)
  assert np.all(np.isfinite(rec))
  np.testing.assert_allclose(rec_from_idx, rec, atol=1e-5)


def test_config_errors_are_user_errors():
  with pytest.raises(UserError, match="factor"):
    VQConfig.from_config({"ch_mult": (1, 2), "patch_size": 1})
  with pytest.raises(UserError, match="unknown config.model fields.*nope"):
    VQConfig.from_config({"nope": 1})
  with pytest.raises(UserError, match="encoder_kernel must be 1 or 3"):
    VQConfig.from_config({"encoder_kernel": 5})


def test_space_to_depth_roundtrip():
  x = jnp.arange(2 * 8 * 8 * 3, dtype=jnp.float32).reshape(2, 8, 8, 3)
  y = space_to_depth(x, 4)
  assert y.shape == (2, 2, 2, 48)
  np.testing.assert_array_equal(y[0, 1, 0].reshape(4, 4, 3), x[0, 4:8, 0:4])
  np.testing.assert_array_equal(depth_to_space(y, 4), x)


def test_nearest_code_matches_brute_force():
  rng = np.random.default_rng(0)
  z, codes = rng.normal(size=(200, 4)), rng.normal(size=(32, 4))
  d = ((z[:, None, :] - codes[None]) ** 2).sum(-1)
  got = qz.nearest_code(jnp.asarray(z, jnp.float32), jnp.asarray(codes, jnp.float32),
                        normalized=False)
  np.testing.assert_array_equal(got, d.argmin(1))
  zn = z / np.linalg.norm(z, axis=1, keepdims=True)
  cn = codes / np.linalg.norm(codes, axis=1, keepdims=True)
  dn = ((zn[:, None, :] - cn[None]) ** 2).sum(-1)
  got = qz.nearest_code(jnp.asarray(zn, jnp.float32), jnp.asarray(cn, jnp.float32),
                        normalized=True)
  np.testing.assert_array_equal(got, dn.argmin(1))


@pytest.mark.parametrize("l2", [False, True])
def test_quantizer_forward_losses_and_straight_through(l2):
  vq = qz.VectorQuantizer(num_codes=8, code_dim=3, beta=0.25, l2_normalize=l2)
  z = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 3))
  params = jax.jit(vq.init)(jax.random.PRNGKey(2), z)
  codebook = np.asarray(params["params"]["codebook"].value)
  z_q, idx, aux = jax.jit(vq.apply)(params, z)

  zn, cn = np.asarray(z).reshape(-1, 3), codebook
  if l2:
    zn = zn / np.linalg.norm(zn, axis=1, keepdims=True)
    cn = cn / np.linalg.norm(cn, axis=1, keepdims=True)
  expect_idx = ((zn[:, None] - cn[None]) ** 2).sum(-1).argmin(1)
  np.testing.assert_array_equal(np.asarray(idx).reshape(-1), expect_idx)
  # Forward value is the chosen code; both losses are the mean squared distance.
  np.testing.assert_allclose(np.asarray(z_q).reshape(-1, 3), cn[expect_idx], atol=1e-6)
  mse = np.mean((zn - cn[expect_idx]) ** 2)
  np.testing.assert_allclose(aux["codebook_loss"], mse, rtol=1e-5)
  np.testing.assert_allclose(aux["commit_loss"], 0.25 * mse, rtol=1e-5)
  np.testing.assert_allclose(aux["errors"], ((zn - cn[expect_idx]) ** 2).sum(-1), rtol=1e-5)

  # Straight-through: d/dz of <w, z_q> equals d/dz of <w, normalise(z)>.
  w = jax.random.normal(jax.random.PRNGKey(3), z.shape)
  grad_st = jax.jit(jax.grad(lambda z: jnp.sum(vq.apply(params, z)[0] * w)))(z)
  ident = (lambda z: qz.l2_normalize(z)) if l2 else (lambda z: z)
  grad_id = jax.grad(lambda z: jnp.sum(ident(z) * w))(z)
  np.testing.assert_allclose(grad_st, grad_id, atol=1e-6)
  # The codebook gets gradient only from the codebook loss.
  g = jax.jit(jax.grad(lambda p: vq.apply(p, z)[2]["codebook_loss"]))(params)
  g = g["params"]["codebook"].value
  unused = np.setdiff1d(np.arange(8), expect_idx)
  assert np.all(np.asarray(g)[unused] == 0) and np.any(np.asarray(g) != 0)


def test_perplexity_and_counts():
  counts = qz.code_counts(jnp.array([[0, 1], [2, 3]]), 8)
  np.testing.assert_array_equal(counts, [1, 1, 1, 1, 0, 0, 0, 0])
  np.testing.assert_allclose(qz.perplexity(counts), 4.0, rtol=1e-6)
  np.testing.assert_allclose(qz.perplexity(qz.code_counts(jnp.zeros(10, jnp.int32), 8)), 1.0)


def test_entropy_loss_matches_numpy():
  rng = np.random.default_rng(0)
  z, codes = rng.normal(size=(6, 3)).astype(np.float32), rng.normal(size=(5, 3)).astype(np.float32)
  logits = z @ codes.T / 0.5
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  sample = -(p * np.log(p)).sum(1).mean()
  avg = p.mean(0)
  np.testing.assert_allclose(qz.entropy_loss(jnp.asarray(z), jnp.asarray(codes), 0.5),
                             sample + (avg * np.log(avg)).sum(), rtol=1e-4)


def test_loss_values():
  x = jnp.zeros((2, 4, 4, 3))
  y = jnp.full((2, 4, 4, 3), 0.2)
  np.testing.assert_allclose(losses.reconstruction_loss(y, x, "l1"), 0.2, rtol=1e-6)
  np.testing.assert_allclose(losses.reconstruction_loss(y, x, "l2"), 0.04, rtol=1e-6)
  with pytest.raises(UserError, match="unknown reconstruction loss"):
    losses.reconstruction_loss(y, x, "l3")
  # 0.2 in [-1, 1] is 0.1 in [0, 1]: PSNR = -10 log10(0.01) = 20 dB.
  np.testing.assert_allclose(losses.psnr(y, x), [20.0, 20.0], rtol=1e-5)
  np.testing.assert_allclose(losses.psnr(x, x), [100.0, 100.0])
  np.testing.assert_allclose(losses.hinge_d_loss(jnp.array([2.0, 0.0]), jnp.array([-2.0, 0.5])),
                             0.5 * (0.5 + 0.75))
  np.testing.assert_allclose(losses.hinge_g_loss(jnp.array([1.0, 3.0])), -2.0)
  np.testing.assert_allclose(losses.adaptive_weight(jnp.array([3.0, 4.0]), jnp.array([0.0, 10.0])),
                             5.0 / (10.0 + 1e-4), rtol=1e-6)
  np.testing.assert_array_equal(losses.to_uint8(jnp.array([-1.0, 0.0, 1.0, 2.0])),
                                [0, 128, 255, 255])


def test_patch_discriminator_shape():
  d = PatchDiscriminator(ch=8, num_layers=2, groups=4)
  x = jnp.zeros((2, 32, 32, 3))
  out = jax.eval_shape(d.apply, jax.eval_shape(d.init, jax.random.PRNGKey(0), x), x)
  # 32 -> 16 -> 8 (stride 2) -> 7 -> 6 (4x4 convs, stride 1, padding 1).
  assert out.shape == (2, 6, 6, 1)


def _lpips_file(path, scale=0.05):
  rng = np.random.default_rng(0)
  arrays, cin, n = {}, 3, 0
  for width in perceptual._VGG16:  # pylint: disable=protected-access
    if width == "M":
      continue
    n += 1
    arrays[f"conv{n}/kernel"] = (scale * rng.normal(size=(3, 3, cin, width))).astype(np.float32)
    arrays[f"conv{n}/bias"] = np.zeros(width, np.float32)
    cin = width
  for i, tap in enumerate(perceptual._TAPS):  # pylint: disable=protected-access
    arrays[f"lin{i}"] = np.abs(rng.normal(size=arrays[f"conv{tap}/bias"].shape)).astype(np.float32)
  np.savez(path, **arrays)


def test_perceptual_plugin_off_by_default_and_lpips_loader(tmp_path):
  lc = ml_collections.ConfigDict({"perceptual": "", "perceptual_weight": 0.0,
                                  "perceptual_weights": ""})
  assert perceptual.build(lc) is None
  lc.perceptual, lc.perceptual_weight = "nope", 1.0
  with pytest.raises(UserError, match="unknown config.loss.perceptual 'nope'"):
    perceptual.build(lc)
  lc.perceptual = "lpips"
  with pytest.raises(UserError, match="LPIPS weights file not found"):
    perceptual.build(lc)
  bad = tmp_path / "bad.npz"
  np.savez(bad, **{"conv1/kernel": np.zeros((3, 3, 3, 8), np.float32)})
  lc.perceptual_weights = str(bad)
  with pytest.raises(UserError, match="conv1/kernel should have shape"):
    perceptual.build(lc)
  good = tmp_path / "lpips.npz"
  _lpips_file(good)
  lc.perceptual_weights = str(good)
  fn = perceptual.build(lc)
  x = jax.random.uniform(jax.random.PRNGKey(0), (2, 16, 16, 3), minval=-1, maxval=1)
  y = x.at[1].set(-x[1])
  d = np.asarray(jax.jit(fn)(y, x))
  assert d.shape == (2,) and abs(d[0]) < 1e-6 and d[1] > 1e-4
