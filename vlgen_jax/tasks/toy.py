"""The `toy` task: a tiny causal transformer on synthetic token sequences.

It exists to exercise the trainer end to end (sharding, accumulation,
checkpoints, multi-host) in seconds on CPU. Every param carries logical axis
names (vocab/embed/heads/kv/mlp/norm), so the fsdp and tensor axes really
split it, and activations get logical constraints at block boundaries.

Data: a random pattern of period 2-4 repeated, hashed from the example's
global index, so after one period the model can predict by looking back. A batch is one element of a `grain.MapDataset` over a range,
computed from the batch index with numpy: iterator state is one integer and
restores exactly, and process p of P gets rows [p*B/P, (p+1)*B/P) of the same
global batch a single process would see. `config.data.dir` can instead name a
directory with `<split>.npy` int arrays (N, seq_len + 1) of token ids; rows
with ids outside the vocabulary are skipped and counted (`data_stats`).

`config.data.source = "tar"`, `"folder"` or `"tfds"` reads images through the real input
pipeline (vlgen_jax/data/pipeline.py: decode, counted skips of bad records,
resumable state) and makes each a pixel sequence, iGPT style: the image at
`data.resolution` (3 x 3 for seq_len 8), gray levels quantised to the
vocabulary, in raster order. The reliability tests use it to train on
damaged tar shards.
"""
from __future__ import annotations

import os
import sys
from typing import Any

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vlgen_jax.errors import UserError
from vlgen_jax.train import numerics
from vlgen_jax.tasks.base import Task

SPLITS = {"train": 0, "validation": 1}
IMAGE_SOURCES = ("tfds", "tar", "folder")
ACT = ("activation_batch", "activation_length", "activation_embed")


def _param(init, names):
  return nn.with_logical_partitioning(init, names)


class Block(nn.Module):
  num_heads: int
  head_dim: int
  mlp_dim: int
  dropout: float
  dtype: Any

  @nn.compact
  def __call__(self, x, train: bool):
    d, h, k = x.shape[-1], self.num_heads, self.head_dim

    def weight(name, shape, names, in_axis, out_axis):
      init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal",
                                              in_axis=in_axis, out_axis=out_axis)
      return self.param(name, _param(init, names), shape, jnp.float32).astype(self.dtype)

    def norm(name):
      return nn.RMSNorm(dtype=self.dtype, name=name,
                        scale_init=_param(nn.initializers.ones, ("norm",)))

    y = norm("attention_norm")(x)
    qkv = [jnp.einsum("bld,dhk->blhk", y, weight(n, (d, h, k), ("embed", "heads", "kv"), 0, (1, 2)))
           for n in ("query", "key", "value")]
    q, kk, v = [nn.with_logical_constraint(
        t, ("activation_batch", "activation_length", "activation_heads", "activation_kv"))
        for t in qkv]
    attn = jax.nn.dot_product_attention(q, kk, v, is_causal=True)
    out = weight("attention_out", (h, k, d), ("heads", "kv", "embed"), (0, 1), 2)
    x = nn.with_logical_constraint(x + jnp.einsum("blhk,hkd->bld", attn, out), ACT)
    y = norm("mlp_norm")(x)
    y = nn.gelu(y @ weight("mlp_in", (d, self.mlp_dim), ("embed", "mlp"), 0, 1))
    y = nn.with_logical_constraint(y, ("activation_batch", "activation_length", "activation_mlp"))
    y = nn.Dropout(self.dropout, deterministic=not train)(y)
    x = x + y @ weight("mlp_out", (self.mlp_dim, d), ("mlp", "embed"), 0, 1)
    return nn.with_logical_constraint(x, ACT)


class ToyTransformer(nn.Module):
  vocab_size: int
  embed_dim: int
  num_heads: int
  head_dim: int
  mlp_dim: int
  num_layers: int
  seq_len: int
  dropout: float
  dtype: Any

  @nn.compact
  def __call__(self, tokens, train: bool = False):
    embedding = self.param("embedding", _param(nn.initializers.normal(0.5), ("vocab", "embed")),
                           (self.vocab_size, self.embed_dim), jnp.float32)
    positions = self.param("position_embedding", _param(nn.initializers.normal(0.5), (None, "embed")),
                           (self.seq_len, self.embed_dim), jnp.float32)
    # Gather the fsdp-sharded embed dim first (as FSDP does for every weight at
    # use): a lookup into a table split on its output dim would otherwise
    # fight the batch sharding of the result.
    table = nn.with_logical_constraint(embedding, ("vocab", None))
    x = (jnp.take(table, tokens, axis=0) + positions[:tokens.shape[1]]).astype(self.dtype)
    x = nn.with_logical_constraint(x, ACT)
    for i in range(self.num_layers):
      x = Block(self.num_heads, self.head_dim, self.mlp_dim, self.dropout, self.dtype,
                name=f"block_{i}")(x, train)
    x = nn.RMSNorm(dtype=self.dtype, name="final_norm",
                   scale_init=_param(nn.initializers.ones, ("norm",)))(x)
    head = self.param("head", _param(nn.initializers.lecun_normal(), ("embed", "vocab")),
                      (self.embed_dim, self.vocab_size), jnp.float32)
    logits = x @ head.astype(self.dtype)
    return nn.with_logical_constraint(logits, ("activation_batch", "activation_length",
                                               "activation_vocab"))


# ---- data ----------------------------------------------------------------------

def _mix(x: np.ndarray) -> np.ndarray:
  """splitmix64 finaliser: a counter-based hash, vectorised over uint64."""
  with np.errstate(over="ignore"):
    x = (x + np.uint64(0x9E3779B97F4A7C15)) & np.uint64(0xFFFFFFFFFFFFFFFF)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def synthetic_sequences(indices: np.ndarray, *, seed: int, split: int, vocab_size: int,
                        length: int) -> np.ndarray:
  """int32 (len(indices), length) sequences for global example indices: a
  random pattern of period 2, 3 or 4 repeated (an induction/copy task)."""
  idx = np.asarray(indices, np.uint64)
  with np.errstate(over="ignore"):
    h = _mix(idx * np.uint64(4) + np.uint64(split) + _mix(np.full_like(idx, seed % 2**64)))
    pattern = np.stack([_mix(h + np.uint64(j)) % np.uint64(vocab_size) for j in range(4)], 1)
  period = (2 + (h >> np.uint64(40)) % np.uint64(3)).astype(np.int64)
  t = np.arange(length)[None, :] % period[:, None]
  return np.take_along_axis(pattern.astype(np.int64), t, axis=1).astype(np.int32)


class _BatchFn:
  """Batch index -> this process's rows of that global batch (picklable, pure)."""

  def __init__(self, rows_of, *, batch_size, process_index, process_count):
    self.rows_of = rows_of
    self.local = batch_size
    self.offset = process_index * batch_size
    self.global_size = batch_size * process_count

  def __call__(self, t):
    start = int(t) * self.global_size + self.offset
    return {"tokens": self.rows_of(np.arange(start, start + self.local))}


def pixel_tokens(images: np.ndarray, vocab_size: int, length: int) -> np.ndarray:
  """float32 (B, R, R, 3) in [-1, 1] -> int32 (B, length): gray levels in raster order."""
  gray = images.astype(np.float32).mean(-1).reshape(images.shape[0], -1)
  levels = np.floor((gray + 1.0) * 0.5 * vocab_size).astype(np.int64)
  return np.clip(levels, 0, vocab_size - 1)[:, :length].astype(np.int32)


class PixelTokenIterator(grain.DatasetIterator):
  """An input-pipeline iterator whose image batches become `{"tokens"}` batches;
  state and data statistics are the pipeline's."""

  def __init__(self, parent, vocab_size: int, length: int):
    super().__init__(parent)
    self._vocab_size, self._length = vocab_size, length

  def __next__(self) -> dict:
    batch = next(self._parent)
    return {"tokens": pixel_tokens(batch["image"], self._vocab_size, self._length)}

  def get_state(self):
    return self._parent.get_state()

  def set_state(self, state) -> None:
    self._parent.set_state(state)

  def stats(self) -> dict[str, int]:
    return self._parent.stats()


class ToyTask(Task):
  """Next-token prediction on `toy` data; see the module docstring."""

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    m = config.model
    self.model = ToyTransformer(
        vocab_size=m.vocab_size, embed_dim=m.embed_dim, num_heads=m.num_heads,
        head_dim=m.head_dim, mlp_dim=m.mlp_dim, num_layers=m.num_layers, seq_len=m.seq_len,
        dropout=m.dropout, dtype=numerics.compute_dtype(config))
    self._stats: dict[str, int] = {}
    self._train_iter = None

  # ---- input -------------------------------------------------------------------
  def _rows_fn(self, split: str, seed: int):
    m, data_dir = self.config.model, self.config.data.get("dir", "")
    if not data_dir:
      if split not in SPLITS:
        raise UserError(f"toy synthetic data has splits {sorted(SPLITS)}, not {split!r}")
      return lambda idx: synthetic_sequences(idx, seed=seed, split=SPLITS[split],
                                             vocab_size=m.vocab_size, length=m.seq_len + 1)
    path = os.path.join(data_dir, f"{split}.npy")
    if not os.path.exists(path):
      raise UserError(f"dataset not found: {path} (config.data.dir holds <split>.npy token arrays)")
    rows = np.load(path, allow_pickle=False)
    if rows.ndim != 2 or rows.shape[1] != m.seq_len + 1 or not np.issubdtype(rows.dtype, np.integer):
      raise UserError(f"{path}: expected an integer array (N, {m.seq_len + 1}), "
                      f"got {rows.dtype} {rows.shape}")
    # Rows with ids outside the vocabulary are bad records: skipped, counted.
    valid = np.all((rows >= 0) & (rows < m.vocab_size), axis=1)
    self._stats[f"{split}_skipped_out_of_range"] = int((~valid).sum())
    rows = rows[valid].astype(np.int32)
    if not len(rows):
      raise UserError(f"{path}: no valid rows (token ids must be in [0, {m.vocab_size}))")
    return lambda idx: rows[np.asarray(idx) % len(rows)]

  def data_stats(self) -> dict[str, int]:
    if self._train_iter is not None:
      return dict(self._train_iter.stats())
    return dict(self._stats)

  def _image_iterator(self, split, *, batch_size, train, seed, process_index, process_count):
    from vlgen_jax.data import pipeline
    m, data = self.config.model, self.config.data
    if int(data.resolution) ** 2 < m.seq_len + 1:
      raise UserError(f"config.data.resolution={data.resolution} gives {int(data.resolution) ** 2} "
                      f"pixels per image, fewer than model.seq_len + 1 = {m.seq_len + 1}")
    data = ml_collections.ConfigDict(data.to_dict())
    data.tokenizer = ""  # pixels only
    it = pipeline.make_iterator(data, split=split, batch_size=batch_size, seed=seed, train=train,
                                process_index=process_index, process_count=process_count)
    it = PixelTokenIterator(it, m.vocab_size, m.seq_len + 1)
    if train:
      self._train_iter = it
    return it

  def input_iterator(self, split, *, batch_size, train, seed, process_index, process_count):
    source = self.config.data.get("source", "synthetic")
    if source not in ("synthetic",) + IMAGE_SOURCES:
      raise UserError(f"toy config.data.source must be synthetic or one of {IMAGE_SOURCES}, "
                      f"got {source!r}")
    if source in IMAGE_SOURCES:
      return self._image_iterator(split, batch_size=batch_size, train=train, seed=seed,
                                  process_index=process_index, process_count=process_count)
    fn = _BatchFn(self._rows_fn(split, seed), batch_size=batch_size,
                  process_index=process_index, process_count=process_count)
    ds = grain.MapDataset.range(sys.maxsize).map(fn)
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=4)))

  # ---- model -------------------------------------------------------------------
  def init(self, rng, batch):
    params = self.model.init(rng, batch["tokens"][:, :-1])["params"]
    counts = _param(nn.initializers.zeros, ("vocab",))(rng, (self.config.model.vocab_size,),
                                                       jnp.float32)
    return params, {"token_counts": counts}

  def loss(self, params, model_state, batch, rng, *, train):
    tokens = batch["tokens"]
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    logits = self.model.apply({"params": params}, inputs, train=train, rngs={"dropout": rng})
    logits = logits.astype(jnp.float32)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
    accuracy = (jnp.argmax(logits, -1) == targets).mean()
    if train:
      # Non-gradient state threaded through micro-batches: target frequencies.
      counts = model_state["token_counts"].at[targets.reshape(-1)].add(1.0)
      model_state = {"token_counts": counts}
    return loss, ({"accuracy": accuracy}, model_state)

  def optimizer_labels(self, params):
    if not self.config.get("optimizers"):
      return None
    from vlgen_jax.train.optimizer import path_name
    return jax.tree_util.tree_map_with_path(
        lambda p, _: "embeddings" if "embedding" in path_name(p) else "body", params)

  # ---- accounting ----------------------------------------------------------------
  def flops_per_example(self) -> float:
    m = self.config.model
    hk = m.num_heads * m.head_dim
    matmul_params = m.num_layers * (4 * m.embed_dim * hk + 2 * m.embed_dim * m.mlp_dim)
    matmul_params += m.embed_dim * m.vocab_size
    attention = m.num_layers * 12 * m.seq_len * m.seq_len * hk
    return float(6 * m.seq_len * matmul_params + attention)

  def tokens_per_example(self) -> int:
    return int(self.config.model.seq_len)
