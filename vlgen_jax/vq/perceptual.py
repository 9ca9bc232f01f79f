"""Pluggable perceptual loss (off by default).

A perceptual loss compares deep features of a pretrained network, so it needs
pretrained weights, which this project does not ship or download. A plugin is
a factory `make(loss_config) -> fn` registered under a name; `fn(x_rec, x)`
takes [-1, 1] NHWC images and returns a per-example loss (B,). Configs select
it with `config.loss.perceptual=<name>` and `config.loss.perceptual_weight>0`.

Built in: `lpips`, the LPIPS-VGG16 architecture (Zhang et al. 2018), loading
its weights from `config.loss.perceptual_weights`, an `.npz` file (read with
allow_pickle=False) with arrays
  `conv{1..13}/kernel` (3, 3, Cin, Cout) and `conv{1..13}/bias` (Cout,): VGG16
     convs in order (torchvision `features` conv layers, kernels transposed
     from OIHW to HWIO);
  `lin{0..4}` (C,): the non-negative LPIPS channel weights per tap.
"""
from __future__ import annotations

import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from vlgen_jax.errors import UserError

PerceptualFn = Callable[[jax.Array, jax.Array], jax.Array]
_REGISTRY: dict[str, Callable[..., PerceptualFn]] = {}


def register(name: str):
  """Decorator registering a factory `make(loss_config) -> PerceptualFn`."""
  def wrap(make):
    _REGISTRY[name] = make
    return make
  return wrap


def build(loss_config) -> PerceptualFn | None:
  """The configured perceptual loss, or None when it is off."""
  name = loss_config.get("perceptual", "")
  weight = float(loss_config.get("perceptual_weight", 0.0))
  if not name or weight <= 0:
    return None
  if name not in _REGISTRY:
    raise UserError(f"unknown config.loss.perceptual {name!r}; registered: {sorted(_REGISTRY)}")
  return _REGISTRY[name](loss_config)


# VGG16 conv widths; "M" = 2x2 max-pool. LPIPS taps relu1_2, relu2_2, relu3_3,
# relu4_3, relu5_3 (after convs 2, 4, 7, 10, 13).
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
_TAPS = (2, 4, 7, 10, 13)
# LPIPS input scaling layer (maps [-1, 1] images to VGG's normalisation).
_SHIFT = np.array([-0.030, -0.088, -0.188], np.float32)
_SCALE = np.array([0.458, 0.448, 0.450], np.float32)


def load_lpips_weights(path: str) -> dict[str, np.ndarray]:
  if not path or not os.path.exists(path):
    raise UserError(f"config.loss.perceptual_weights: LPIPS weights file not found: {path!r} "
                    "(pretrained weights are not shipped; see docs/vq.md)")
  with np.load(path, allow_pickle=False) as f:
    weights = {k: np.asarray(f[k], np.float32) for k in f.files}
  cin, n = 3, 0
  for width in _VGG16:
    if width == "M":
      continue
    n += 1
    for key, shape in ((f"conv{n}/kernel", (3, 3, cin, width)), (f"conv{n}/bias", (width,))):
      if key not in weights or weights[key].shape != shape:
        got = weights[key].shape if key in weights else "missing"
        raise UserError(f"LPIPS weights {path}: {key} should have shape {shape}, got {got}")
    cin = width
  for i, tap in enumerate(_TAPS):
    width = weights[f"conv{tap}/bias"].shape[0]
    if weights.get(f"lin{i}", np.zeros(0)).shape != (width,):
      raise UserError(f"LPIPS weights {path}: lin{i} should have shape ({width},)")
  return weights


def lpips_distance(weights: dict[str, jax.Array], x_rec: jax.Array, x: jax.Array) -> jax.Array:
  """LPIPS distance per example (B,) between [-1, 1] images."""
  def features(img):
    h = (img.astype(jnp.float32) - _SHIFT) / _SCALE
    taps, n = [], 0
    for width in _VGG16:
      if width == "M":
        h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
        continue
      n += 1
      h = jax.lax.conv_general_dilated(h, weights[f"conv{n}/kernel"], (1, 1), "SAME",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
      h = jax.nn.relu(h + weights[f"conv{n}/bias"])
      if n in _TAPS:
        taps.append(h)
    return taps

  total = 0.0
  for i, (a, b) in enumerate(zip(features(x_rec), features(x))):
    a = a * jax.lax.rsqrt(jnp.sum(a * a, -1, keepdims=True) + 1e-10)
    b = b * jax.lax.rsqrt(jnp.sum(b * b, -1, keepdims=True) + 1e-10)
    total = total + jnp.mean(jnp.sum(jnp.square(a - b) * weights[f"lin{i}"], -1), axis=(1, 2))
  return total


@register("lpips")
def make_lpips(loss_config) -> PerceptualFn:
  weights = jax.tree.map(jnp.asarray, load_lpips_weights(loss_config.get("perceptual_weights", "")))
  # The frozen weights are closed over: no gradient reaches them.
  return lambda x_rec, x: lpips_distance(weights, x_rec, x)
