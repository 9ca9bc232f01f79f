"""Inception-v3 up to the 2048-d pool3 features (the network FID/KID use).

The layout is torchvision's / pytorch-fid's `InceptionV3` (Szegedy et al.
2016): every conv is bias-free followed by an inference BatchNorm (eps 1e-3)
and ReLU; blocks Mixed_5b..Mixed_7c; global average pool. Input: NHWC
floats in [-1, 1] (299 x 299 for the standard features; any size >= 75
runs). No weights ship with vlgen: `load_weights` reads a user's
.npz/.safetensors whose names are the flattened Flax paths
("Conv2d_1a_3x3/conv/kernel", ".../bn/mean", ...; kernels HWIO) and checks
every name and shape against this network. Converting torchvision/pytorch-fid
weights is a renaming and an OIHW -> HWIO transpose.
"""
from __future__ import annotations

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vlgen_jax import files
from vlgen_jax.errors import UserError

POOL_FEATURES = 2048


class BasicConv(nn.Module):
  features: int
  kernel: tuple[int, int]
  strides: int = 1
  padding: tuple[int, int] = (0, 0)

  @nn.compact
  def __call__(self, x):
    pad = [(self.padding[0], self.padding[0]), (self.padding[1], self.padding[1])]
    x = nn.Conv(self.features, self.kernel, strides=self.strides, padding=pad, use_bias=False,
                name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
    return nn.relu(x)


def _max_pool(x):
  return nn.max_pool(x, (3, 3), strides=(2, 2))


def _avg_pool_same(x):
  # torchvision: avg_pool2d(3, stride 1, padding 1) counting padded zeros.
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=True)


class InceptionA(nn.Module):
  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv(64, (1, 1), name="branch1x1")(x)
    b5 = BasicConv(48, (1, 1), name="branch5x5_1")(x)
    b5 = BasicConv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
    b3 = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
    b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
    b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
    bp = BasicConv(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_same(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(384, (3, 3), strides=2, name="branch3x3")(x)
    bd = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
    bd = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = BasicConv(96, (3, 3), strides=2, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool(x)], axis=-1)


class InceptionC(nn.Module):
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c = self.channels_7x7
    b1 = BasicConv(192, (1, 1), name="branch1x1")(x)
    b7 = BasicConv(c, (1, 1), name="branch7x7_1")(x)
    b7 = BasicConv(c, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
    bd = BasicConv(c, (1, 1), name="branch7x7dbl_1")(x)
    bd = BasicConv(c, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
    bd = BasicConv(c, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
    bd = BasicConv(c, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
    bd = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
    bp = BasicConv(192, (1, 1), name="branch_pool")(_avg_pool_same(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(192, (1, 1), name="branch3x3_1")(x)
    b3 = BasicConv(320, (3, 3), strides=2, name="branch3x3_2")(b3)
    b7 = BasicConv(192, (1, 1), name="branch7x7x3_1")(x)
    b7 = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = BasicConv(192, (3, 3), strides=2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool(x)], axis=-1)


class InceptionE(nn.Module):
  @nn.compact
  def __call__(self, x):
    b1 = BasicConv(320, (1, 1), name="branch1x1")(x)
    b3 = BasicConv(384, (1, 1), name="branch3x3_1")(x)
    b3 = jnp.concatenate([BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                          BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], -1)
    bd = BasicConv(448, (1, 1), name="branch3x3dbl_1")(x)
    bd = BasicConv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate([BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                          BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], -1)
    bp = BasicConv(192, (1, 1), name="branch_pool")(_avg_pool_same(x))
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nn.Module):
  """NHWC images in [-1, 1] -> (B, 2048) pool3 features."""

  @nn.compact
  def __call__(self, x):
    x = BasicConv(32, (3, 3), strides=2, name="Conv2d_1a_3x3")(x)
    x = BasicConv(32, (3, 3), name="Conv2d_2a_3x3")(x)
    x = BasicConv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
    x = _max_pool(x)
    x = BasicConv(80, (1, 1), name="Conv2d_3b_1x1")(x)
    x = BasicConv(192, (3, 3), name="Conv2d_4a_3x3")(x)
    x = _max_pool(x)
    x = InceptionA(32, name="Mixed_5b")(x)
    x = InceptionA(64, name="Mixed_5c")(x)
    x = InceptionA(64, name="Mixed_5d")(x)
    x = InceptionB(name="Mixed_6a")(x)
    for name, c in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
      x = InceptionC(c, name=name)(x)
    x = InceptionD(name="Mixed_7a")(x)
    x = InceptionE(name="Mixed_7b")(x)
    x = InceptionE(name="Mixed_7c")(x)
    return jnp.mean(x, axis=(1, 2))


# ---- weights ---------------------------------------------------------------------
# Flat names: "<path>/kernel" for conv kernels (HWIO), "<path>/scale", "<path>/bias"
# for BatchNorm params, "<path>/mean", "<path>/var" for its running statistics.

def abstract_variables(model: InceptionV3, resolution: int = 299):
  return jax.eval_shape(lambda: model.init(jax.random.key(0),
                                           jnp.zeros((1, resolution, resolution, 3))))


def flatten(variables) -> dict[str, np.ndarray]:
  """{"Conv2d_1a_3x3/conv/kernel": array, ...} of Flax variables (params + batch_stats)."""
  out = {}
  for collection, tree in variables.items():
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
      out["/".join(k.key for k in path)] = leaf
  return out


def unflatten(flat: dict[str, np.ndarray], like) -> dict:
  """Flax variables shaped like `like` from flat names (see `flatten`)."""
  def put(collection):
    def leaf(path, _):
      return jnp.asarray(flat["/".join(k.key for k in path)])
    return jax.tree_util.tree_map_with_path(leaf, like[collection])
  return {c: put(c) for c in like}


_SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64}


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """The float tensors of a .safetensors file (8-byte little-endian header
  size, JSON header of dtype/shape/data_offsets, then the raw data)."""
  with open(path, "rb") as f:
    size = int.from_bytes(f.read(8), "little")
    if not 0 < size < 100 << 20:
      raise ValueError(f"bad header size {size}")
    header = json.loads(f.read(size))
    data = f.read()
  out = {}
  for name, entry in header.items():
    if name == "__metadata__":
      continue
    if entry["dtype"] not in _SAFETENSORS_DTYPES:
      raise ValueError(f"{name}: dtype {entry['dtype']} is not a float type")
    start, end = entry["data_offsets"]
    dtype = np.dtype(_SAFETENSORS_DTYPES[entry["dtype"]]).newbyteorder("<")
    out[name] = np.frombuffer(data[start:end], dtype).reshape(entry["shape"])
  return out


def _read(path: str) -> dict[str, np.ndarray]:
  if not os.path.isfile(path):
    raise UserError(f"Inception weights not found: {path}")
  try:
    if path.endswith(".safetensors"):
      return read_safetensors(path)
    with np.load(path, allow_pickle=False) as f:
      return {k: np.asarray(f[k]) for k in f.files}
  except UserError:
    raise
  except Exception as e:  # a corrupt or foreign file: one line, not a traceback
    raise UserError(f"unreadable Inception weights {path}: {e}") from None


def load_weights(path: str, model: InceptionV3, resolution: int = 299) -> dict:
  """Variables from a .npz/.safetensors file; every name and shape checked."""
  flat = _read(path)
  want = {k: v.shape for k, v in flatten(abstract_variables(model, resolution)).items()}
  missing = sorted(set(want) - set(flat))
  extra = sorted(set(flat) - set(want))
  if missing or extra:
    raise UserError(f"{path} is not Inception-v3 weights for vlgen: "
                    f"{len(missing)} names missing (e.g. {missing[:1]}), "
                    f"{len(extra)} unexpected (e.g. {extra[:1]})")
  for name, shape in want.items():
    if tuple(flat[name].shape) != tuple(shape):
      raise UserError(f"{path}: {name} has shape {tuple(flat[name].shape)}, "
                      f"Inception-v3 needs {tuple(shape)}")
  return unflatten({k: np.asarray(v, np.float32) for k, v in flat.items()},
                   abstract_variables(model, resolution))


def save_weights(path: str, variables) -> None:
  """Writes variables as .npz (names as `load_weights` reads them), atomically."""
  with files.atomic_path(path, suffix=".npz") as tmp:
    np.savez(tmp, **{k: np.asarray(v) for k, v in flatten(variables).items()})
