"""Fréchet distance against closed forms on Gaussians, batching-independent
statistics, KID, and the Inception-v3 extractor's weight files (random
weights written by the test: nothing is downloaded)."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import linalg

from vlgen_jax.errors import UserError
from vlgen_jax.eval import frechet
from vlgen_jax.model import inception


def _random_cov(rng, d):
  a = rng.normal(size=(d, d))
  return a @ a.T / d + 0.1 * np.eye(d)


def test_frechet_distance_equals_closed_forms():
  rng = np.random.default_rng(0)
  # Commuting (diagonal) covariances: |dmu|^2 + sum (sqrt(a) - sqrt(b))^2.
  mu_a, mu_b = rng.normal(size=5), rng.normal(size=5)
  a, b = rng.uniform(0.5, 2, 5), rng.uniform(0.5, 2, 5)
  want = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  assert frechet.frechet_distance(mu_a, np.diag(a), mu_b, np.diag(b)) == pytest.approx(want, rel=1e-10)
  # General covariances: the textbook formula with scipy's sqrtm.
  ca, cb = _random_cov(rng, 6), _random_cov(rng, 6)
  mu_a, mu_b = rng.normal(size=6), rng.normal(size=6)
  ref = (np.sum((mu_a - mu_b) ** 2) + np.trace(ca) + np.trace(cb)
         - 2 * np.trace(linalg.sqrtm(ca @ cb).real))
  assert frechet.frechet_distance(mu_a, ca, mu_b, cb) == pytest.approx(ref, rel=1e-8)
  assert frechet.frechet_distance(mu_a, ca, mu_a, ca) == pytest.approx(0.0, abs=1e-9)


def test_sampled_gaussians_approach_the_closed_form():
  rng = np.random.default_rng(1)
  d = 4
  ca, cb = _random_cov(rng, d), _random_cov(rng, d)
  mu_a, mu_b = np.zeros(d), np.full(d, 0.5)
  exact = frechet.frechet_distance(mu_a, ca, mu_b, cb)
  xa = rng.multivariate_normal(mu_a, ca, 200_000)
  xb = rng.multivariate_normal(mu_b, cb, 200_000)
  sampled = frechet.frechet_from_stats(frechet.FeatureStats.of(xa), frechet.FeatureStats.of(xb))
  assert sampled == pytest.approx(exact, rel=0.02, abs=0.01)
  assert exact > 1.0


def test_statistics_do_not_depend_on_batching():
  rng = np.random.default_rng(2)
  # Features with a large common offset: the naive sum-of-squares form loses digits here.
  xa = rng.normal(size=(3000, 16)) * 0.1 + 1000.0
  xb = rng.normal(size=(2000, 16)) * 0.2 + 1000.5
  values = []
  for batch in (None, 1000, 333, 7):
    sa, sb = frechet.FeatureStats.of(xa, batch), frechet.FeatureStats.of(xb, batch)
    np.testing.assert_allclose(sa.cov, np.cov(xa, rowvar=False), rtol=1e-8, atol=1e-12)
    values.append(frechet.frechet_from_stats(sa, sb))
  assert max(values) - min(values) < 1e-3
  assert values[0] == pytest.approx(16 * 0.25 + 16 * (0.1 - 0.2) ** 2, rel=0.1)


def test_kernel_distance_is_unbiased_and_grows_with_the_gap():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(600, 8))
  same = frechet.kernel_distance(x, rng.normal(size=(600, 8)), num_subsets=20, subset_size=300)
  near = frechet.kernel_distance(x, rng.normal(size=(600, 8)) + 0.3, num_subsets=20,
                                 subset_size=300)
  far = frechet.kernel_distance(x, rng.normal(size=(600, 8)) + 1.0, num_subsets=20,
                                subset_size=300)
  assert abs(same) < 0.02 < near < far
  with pytest.raises(UserError):
    frechet.kernel_distance(x[:1], x[:1])


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
  model = inception.InceptionV3()
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 75, 75, 3)))
  path = tmp_path_factory.mktemp("inception") / "weights.npz"
  inception.save_weights(str(path), variables)
  return model, variables, path


def _write_safetensors(path, tensors):
  header, blobs, offset = {}, [], 0
  for name, value in tensors.items():
    data = np.ascontiguousarray(value, np.float32).tobytes()
    header[name] = {"dtype": "F32", "shape": list(value.shape),
                    "data_offsets": [offset, offset + len(data)]}
    blobs.append(data)
    offset += len(data)
  head = json.dumps(header).encode()
  path.write_bytes(len(head).to_bytes(8, "little") + head + b"".join(blobs))


def test_inception_features_from_weight_files(inception_weights, tmp_path):
  model, variables, npz = inception_weights
  images = np.random.default_rng(4).integers(0, 256, (3, 40, 40, 3), dtype=np.uint8)
  features = frechet.InceptionFeatures(str(npz), batch_size=2, resolution=75)
  got = features(images)
  assert got.shape == (3, inception.POOL_FEATURES)
  x = jax.image.resize(images.astype(np.float32) / 127.5 - 1, (3, 75, 75, 3), "bilinear")
  np.testing.assert_allclose(got, model.apply(variables, x), rtol=1e-4, atol=1e-5)
  # The same weights as safetensors give the same features.
  st = tmp_path / "weights.safetensors"
  _write_safetensors(st, inception.flatten(variables))
  np.testing.assert_allclose(
      frechet.InceptionFeatures(str(st), batch_size=2, resolution=75)(images), got, rtol=1e-6)


def test_inception_weights_are_checked_by_name_and_shape(inception_weights, tmp_path):
  model, variables, _ = inception_weights
  flat = {k: np.asarray(v) for k, v in inception.flatten(variables).items()}
  wrong = dict(flat)
  wrong["Mixed_7c/branch_pool/conv/kernel"] = np.zeros((1, 1, 2048, 100), np.float32)
  np.savez(tmp_path / "shape.npz", **wrong)
  with pytest.raises(UserError, match="Mixed_7c/branch_pool/conv/kernel has shape"):
    inception.load_weights(str(tmp_path / "shape.npz"), model, 75)
  missing = dict(flat)
  del missing["Conv2d_1a_3x3/bn/mean"]
  np.savez(tmp_path / "missing.npz", **missing)
  with pytest.raises(UserError, match="1 names missing"):
    inception.load_weights(str(tmp_path / "missing.npz"), model, 75)
  (tmp_path / "junk.npz").write_bytes(b"not a zip")
  with pytest.raises(UserError, match="unreadable"):
    inception.load_weights(str(tmp_path / "junk.npz"), model, 75)
