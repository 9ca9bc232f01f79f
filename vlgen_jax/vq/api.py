"""`VQTokenizer`: images <-> token grids with a trained tokenizer.

    tok = VQTokenizer.from_workdir("runs/vq")      # params only, no optimizer state
    tokens = tok.encode(images)                    # (B, H, W, 3) -> int32 (B, h, w)
    images = tok.decode(tokens)                    # int32 (B, h, w) -> float32 [-1, 1]

`encode` accepts uint8 [0, 255] or float [-1, 1] images. Both functions are
jitted once per batch shape and spread the batch over all devices (a 1-D
"data" mesh; the batch is padded to a multiple of the device count), with
the params replicated. With several processes, `encode`/`decode` expect the
same input on every process; `encode_global` takes each process's own rows.
`decode(encode(x))` equals the reconstruction of the model's forward pass.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from vlgen_jax.errors import UserError
from vlgen_jax.train import sharding as sharding_lib
from vlgen_jax.vq.model import VQConfig, VQModel

PyTree = Any


class VQTokenizer:

  def __init__(self, config: ml_collections.ConfigDict, vq_params: PyTree, *,
               devices: Sequence[jax.Device] | None = None, dtype=None):
    from vlgen_jax.train import numerics  # pylint: disable=g-import-not-at-top
    self.config = config
    self.model_config = VQConfig.from_config(config.model)
    self.model = VQModel(self.model_config, dtype=dtype or numerics.compute_dtype(config))
    self.resolution = int(config.data.resolution)
    if self.resolution % self.model_config.factor:
      raise UserError(f"resolution {self.resolution} is not divisible by the tokenizer's "
                      f"factor {self.model_config.factor}")
    side = self.resolution // self.model_config.factor
    self.token_grid = (side, side)
    self.num_codes = self.model_config.num_codes
    devices = list(devices) if devices is not None else jax.devices()
    self.mesh = jax.sharding.Mesh(np.asarray(devices), ("data",))
    self._rows = NamedSharding(self.mesh, P("data"))
    self._replicated = NamedSharding(self.mesh, P())
    self.params = jax.device_put(vq_params, self._replicated)
    self._encode = jax.jit(self._encode_fn, out_shardings=self._rows)
    self._decode = jax.jit(self._decode_fn, out_shardings=self._rows)

  @classmethod
  def from_workdir(cls, workdir: str, *, step: int | None = None,
                   devices: Sequence[jax.Device] | None = None, dtype=None) -> "VQTokenizer":
    """Loads a `vlgen train` run of a vq config (its export, or a checkpoint step)."""
    from vlgen_jax.train import checkpoint  # pylint: disable=g-import-not-at-top
    config = checkpoint.load_config(workdir)
    if config.get("task") != "vq":
      raise UserError(f"{workdir} is a {config.get('task')!r} run, not a vq tokenizer run")
    devices = list(devices) if devices is not None else jax.devices()
    mesh = jax.sharding.Mesh(np.asarray(devices), ("data",))
    params = checkpoint.load_params(workdir, step, shardings=NamedSharding(mesh, P()))
    if "vq" not in params:
      raise UserError(f"{workdir}: params have no 'vq' entry (not a vq tokenizer run)")
    return cls(config, params["vq"], devices=devices, dtype=dtype)

  # ---- jitted bodies ---------------------------------------------------------------
  def _encode_fn(self, params, images):
    _, indices, _ = self.model.apply({"params": params}, images, method=VQModel.encode)
    return indices

  def _decode_fn(self, params, tokens):
    return self.model.apply({"params": params}, tokens, method=VQModel.decode_indices)

  # ---- public API ----------------------------------------------------------------
  def _to_device(self, x: np.ndarray) -> tuple[jax.Array, int]:
    n = x.shape[0]
    devices = self.mesh.devices.size
    pad = (-n) % devices
    if pad:
      x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
    return sharding_lib.to_global(x, self._rows), n

  def encode(self, images) -> np.ndarray:
    """(B, R, R, 3) uint8 or [-1, 1] float images -> int32 tokens (B, h, w)."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1:] != (self.resolution, self.resolution, 3):
      raise UserError(f"encode expects images of shape (B, {self.resolution}, "
                      f"{self.resolution}, 3), got {images.shape}")
    if images.dtype == np.uint8:
      images = images.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
    x, n = self._to_device(images.astype(np.float32))
    return sharding_lib.to_host(self._encode(self.params, x))[:n]

  def encode_global(self, local_images) -> np.ndarray:
    """Multi-process encode: each process passes its own rows ([-1, 1] float,
    the same count on every process, a multiple of its local devices) and gets
    their tokens back. Collective: every process must call it."""
    x = np.asarray(local_images, np.float32)
    global_shape = (x.shape[0] * jax.process_count(),) + x.shape[1:]
    arr = jax.make_array_from_process_local_data(self._rows, x, global_shape)
    out = self._encode(self.params, arr)
    shards = sorted(out.addressable_shards, key=lambda s: s.index[0].start)
    return np.concatenate([np.asarray(s.data) for s in shards])

  def decode(self, tokens) -> np.ndarray:
    """int tokens (B, h, w) or (B, h*w) -> float32 images (B, R, R, 3) in [-1, 1]."""
    tokens = np.asarray(tokens)
    h, w = self.token_grid
    if tokens.ndim == 2 and tokens.shape[1] == h * w:
      tokens = tokens.reshape(-1, h, w)
    if tokens.ndim != 3 or tokens.shape[1:] != (h, w):
      raise UserError(f"decode expects tokens of shape (B, {h}, {w}) or (B, {h * w}), "
                      f"got {tokens.shape}")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= self.num_codes):
      raise UserError(f"token ids must be in [0, {self.num_codes}), "
                      f"got [{tokens.min()}, {tokens.max()}]")
    t, n = self._to_device(tokens.astype(np.int32))
    return sharding_lib.to_host(self._decode(self.params, t))[:n]

  def decode_uint8(self, tokens) -> np.ndarray:
    """Like `decode`, as uint8 [0, 255] images."""
    x = self.decode(tokens)
    return np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)

  def reconstruct(self, images) -> np.ndarray:
    """decode(encode(images))."""
    return self.decode(self.encode(images))

