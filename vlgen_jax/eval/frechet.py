"""Fréchet distance and kernel distance between two sets of image features.

FD = |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between the Gaussians
fitted to two feature sets (FID when the features are Inception-v3 pool3).
The trace of the matrix square root is computed as the sum of square roots
of the eigenvalues of S_a^(1/2) S_b S_a^(1/2) (symmetric PSD, so real),
which avoids `scipy.linalg.sqrtm`'s complex round-off.

`FeatureStats` accumulates mean and covariance in float64 batch by batch
with Chan et al.'s pairwise update, so the statistics (and the distance) do
not depend on how the features were batched beyond float64 round-off.

KID is the unbiased MMD^2 with the polynomial kernel k(x, y) = (x.y / d + 1)^3,
averaged over random subsets (Bińkowski et al. 2018); unlike FD it is
unbiased in the number of samples.

Feature extractors (`vlgen eval`): the captioner's image encoder, mean-pooled
over the token grid (`CaptionerFeatures`, no downloads, any dataset), or
Inception-v3 pool3 from a user-supplied weights file (`InceptionFeatures`,
vlgen_jax/model/inception.py), for numbers comparable with the literature.
"""
from __future__ import annotations

import numpy as np

from vlgen_jax.errors import UserError


class FeatureStats:
  """Running count, mean (d,) and scatter matrix (d, d) in float64."""

  def __init__(self, dim: int):
    self.n = 0
    self.mean = np.zeros(dim, np.float64)
    self.scatter = np.zeros((dim, dim), np.float64)

  def update(self, features) -> "FeatureStats":
    x = np.asarray(features, np.float64)
    if x.ndim != 2 or x.shape[1] != self.mean.shape[0]:
      raise ValueError(f"features of shape {x.shape}, expected (n, {self.mean.shape[0]})")
    m = x.shape[0]
    if m == 0:
      return self
    batch_mean = x.mean(axis=0)
    centred = x - batch_mean
    batch_scatter = centred.T @ centred
    delta = batch_mean - self.mean
    total = self.n + m
    self.scatter += batch_scatter + np.outer(delta, delta) * (self.n * m / total)
    self.mean += delta * (m / total)
    self.n = total
    return self

  @property
  def cov(self) -> np.ndarray:
    if self.n < 2:
      raise UserError(f"a covariance needs at least 2 feature vectors, got {self.n}")
    return self.scatter / (self.n - 1)

  @classmethod
  def of(cls, features, batch_size: int | None = None) -> "FeatureStats":
    features = np.asarray(features)
    stats = cls(features.shape[1])
    step = batch_size or max(len(features), 1)
    for i in range(0, len(features), step):
      stats.update(features[i:i + step])
    return stats


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
  w, v = np.linalg.eigh((a + a.T) / 2)
  return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu_a, cov_a, mu_b, cov_b) -> float:
  """Fréchet distance between N(mu_a, cov_a) and N(mu_b, cov_b)."""
  mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
  cov_a, cov_b = np.asarray(cov_a, np.float64), np.asarray(cov_b, np.float64)
  root_a = _sqrt_psd(cov_a)
  middle = root_a @ cov_b @ root_a
  eig = np.linalg.eigvalsh((middle + middle.T) / 2)
  trace_sqrt = float(np.sum(np.sqrt(np.clip(eig, 0, None))))
  diff = mu_a - mu_b
  return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt)


def frechet_from_stats(a: FeatureStats, b: FeatureStats) -> float:
  return frechet_distance(a.mean, a.cov, b.mean, b.cov)


def _poly_kernel(x, y):
  return (x @ y.T / x.shape[1] + 1.0) ** 3


def kernel_distance(features_a, features_b, *, num_subsets: int = 100, subset_size: int = 1000,
                    seed: int = 0) -> float:
  """KID: mean over random subsets of the unbiased MMD^2 (polynomial kernel)."""
  a, b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
  m = min(subset_size, len(a), len(b))
  if m < 2:
    raise UserError(f"KID needs at least 2 feature vectors per set, got {len(a)} and {len(b)}")
  rng = np.random.default_rng(seed)
  values = []
  for _ in range(num_subsets):
    x = a[rng.choice(len(a), m, replace=False)]
    y = b[rng.choice(len(b), m, replace=False)]
    kxx, kyy, kxy = _poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)
    off = lambda k: (k.sum() - np.trace(k)) / (m * (m - 1))
    values.append(off(kxx) + off(kyy) - 2 * kxy.mean())
  return float(np.mean(values))


# ---- feature extractors ---------------------------------------------------------

class CaptionerFeatures:
  """Mean-pooled image-encoder output of a trained captioner: (n, d_model)
  features of VQ-token images (`features_of_tokens`) or pixels (`__call__`,
  encoded with the captioner's VQ)."""

  def __init__(self, captioner):
    import jax
    from vlgen_jax.model.captioner import Model
    self.captioner = captioner
    model = captioner.model

    def pooled(params, tokens):
      encoded, _ = model.apply({"params": params}, tokens, method=Model.encode_image)
      return encoded.astype(jax.numpy.float32).mean(axis=1)
    self._fn = jax.jit(pooled)
    self.dim = captioner.spec.d_model

  def features_of_tokens(self, image_tokens) -> np.ndarray:
    return self.captioner._batched(self._fn, np.asarray(image_tokens, np.int32))

  def __call__(self, images) -> np.ndarray:
    return self.features_of_tokens(self.captioner.encode_images(list(images)))


class InceptionFeatures:
  """Inception-v3 pool3 (2048-d) features of uint8 images, from weights in a
  .npz or .safetensors file whose names and shapes match
  `vlgen_jax.model.inception` (checked; no downloads)."""

  def __init__(self, path: str, *, batch_size: int = 32, resolution: int = 299):
    import jax
    from vlgen_jax.model import inception
    self.model = inception.InceptionV3()
    self.variables = inception.load_weights(path, self.model, resolution)
    self.resolution, self.batch_size, self.dim = resolution, batch_size, inception.POOL_FEATURES
    model = self.model

    def pooled(variables, images):
      x = jax.image.resize(images.astype(jax.numpy.float32) / 127.5 - 1.0,
                           (images.shape[0], resolution, resolution, 3), "bilinear")
      return model.apply(variables, x)
    self._fn = jax.jit(pooled)

  def __call__(self, images) -> np.ndarray:
    from vlgen_jax.sample.sampler import pad_batch
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
      raise UserError(f"Inception features need (n, H, W, 3) images, got {images.shape}")
    out = []
    for i in range(0, len(images), self.batch_size):
      chunk, real = pad_batch(images[i:i + self.batch_size], self.batch_size)
      out.append(np.asarray(self._fn(self.variables, chunk))[:real])
    return np.concatenate(out)
