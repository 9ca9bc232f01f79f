"""Stage-2 dataset: images pre-encoded to VQ tokens, stored as ArrayRecord.

Layout of a token dataset directory:
  DIR/dataset_info.json                       metadata + per-split shard counts
  DIR/train-00000-of-00004.array_record       records of split `train`
  ...

Each record is a msgpack map (flax.serialization; no pickle anywhere):
  {"tokens": int16/int32 array (h*w,), "caption": str}
Tokens are stored as int16 when the codebook fits (< 32768 codes).

`code_appearance.npz` (written when the `train` split is encoded): `mean`,
float32 (K, p*p*3), the average [0, 1] pixels of the training-image patches
the VQ encoder mapped to each code (zeros for codes it never chose), and
`count`, int64 (K,), how many patches each mean is over. What each code looks
like in real images, for `model.code_embedding="appearance"`.

`dataset_info.json`:
  {"format": "vlgen-token-records", "version": 1,
   "meta": {"token_grid": [h, w], "codebook_size": K, ... anything the
            encoder adds, e.g. tokenizer / VQ checkpoint info},
   "splits": {"train": {"num_records": n, "shards": {"train-00000-of-00004.array_record": n0, ...}}}}

Several writers (one per process of a multi-host `vlgen encode`) may write one
split: writer p of P, with `num_shards` each, writes shards
`p*num_shards + i` of `P*num_shards`. Each writer merges its shard counts into
`dataset_info.json` on `close()` under a file lock; entries of an earlier run
with another shard count are dropped.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from typing import Any, Iterator, Mapping

import numpy as np
from flax import serialization

from vlgen_jax import files
from vlgen_jax.data.decode import BAD_RECORD, BadRecord
from vlgen_jax.errors import UserError

INFO_FILE = "dataset_info.json"
APPEARANCE_FILE = "code_appearance.npz"
FORMAT = "vlgen-token-records"
VERSION = 1
_SHARD_RE = re.compile(r"^(?P<split>.+)-(?P<index>\d{5})-of-(?P<total>\d{5})\.array_record$")


def shard_name(split: str, index: int, total: int) -> str:
  return f"{split}-{index:05d}-of-{total:05d}.array_record"


def encode_token_record(tokens: np.ndarray, caption: str, *, dtype=np.int32) -> bytes:
  return serialization.msgpack_serialize(
      {"tokens": np.asarray(tokens).reshape(-1).astype(dtype), "caption": str(caption)})


def decode_token_record(data: bytes) -> tuple[np.ndarray, str]:
  """Record bytes -> (int32 tokens (h*w,), caption); raises BadRecord."""
  try:
    record = serialization.msgpack_restore(bytes(data))
    tokens = np.asarray(record["tokens"]).astype(np.int32).reshape(-1)
    caption = record["caption"]
  except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
    raise BadRecord(BAD_RECORD, f"undecodable token record: {e}") from None
  except Exception as e:  # msgpack's own exception types (ExtraData, FormatError, ...)
    if type(e).__module__.startswith("msgpack"):
      raise BadRecord(BAD_RECORD, f"undecodable token record: {e}") from None
    raise
  return tokens, caption


def _check_meta(meta: Mapping[str, Any]) -> dict:
  meta = dict(meta)
  for key in ("token_grid", "codebook_size"):
    if key not in meta:
      raise ValueError(f"token dataset meta needs {key!r}")
  meta["token_grid"] = [int(x) for x in meta["token_grid"]]
  meta["codebook_size"] = int(meta["codebook_size"])
  try:
    json.dumps(meta)
  except TypeError as e:
    raise ValueError(f"token dataset meta must be JSON-serializable: {e}") from None
  return meta


@contextlib.contextmanager
def _locked(directory: str):
  with open(os.path.join(directory, ".dataset_info.lock"), "a") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


def read_info(directory: str) -> dict:
  path = os.path.join(directory, INFO_FILE)
  try:
    with open(path) as f:
      info = json.load(f)
  except FileNotFoundError:
    raise UserError(f"no token dataset at {directory} ({INFO_FILE} missing); "
                    "create it with `vlgen encode`") from None
  except json.JSONDecodeError as e:
    raise UserError(f"{path} is not valid JSON: {e}") from None
  if info.get("format") != FORMAT:
    raise UserError(f"{path} is not a vlgen token dataset")
  if info.get("version") != VERSION:
    raise UserError(f"{path} has version {info.get('version')}, this code reads {VERSION}")
  return info


class TokenRecordWriter:
  """Writes one split of a token dataset (this process's share of it).

  Usage:
    with TokenRecordWriter(d, "train", num_shards=4,
                           meta={"token_grid": (16, 16), "codebook_size": 8192}) as w:
      for tokens, caption in ...:
        w.write(tokens, caption)
  """

  def __init__(self, directory: str, split: str, num_shards: int, meta: Mapping[str, Any], *,
               process_index: int = 0, process_count: int = 1):
    from array_record.python.array_record_module import ArrayRecordWriter  # pylint: disable=g-import-not-at-top
    if num_shards < 1:
      raise UserError(f"num_shards must be >= 1, got {num_shards}")
    if not re.fullmatch(r"[A-Za-z0-9_]+", split):
      raise UserError(f"split name must be letters, digits or _, got {split!r}")
    self.directory, self.split = directory, split
    self.meta = _check_meta(meta)
    self._dtype = np.int16 if self.meta["codebook_size"] <= np.iinfo(np.int16).max + 1 else np.int32
    self._num_tokens = int(np.prod(self.meta["token_grid"]))
    os.makedirs(directory, exist_ok=True)
    self._check_existing_meta()
    total = num_shards * process_count
    self._names = [shard_name(split, process_index * num_shards + i, total) for i in range(num_shards)]
    # group_size:1 makes every record individually addressable (random access).
    self._writers = [ArrayRecordWriter(os.path.join(directory, n), "group_size:1")
                     for n in self._names]
    self._counts = [0] * num_shards
    self._next = 0
    self._closed = False

  def _check_existing_meta(self) -> None:
    if not os.path.exists(os.path.join(self.directory, INFO_FILE)):
      return
    old = read_info(self.directory)["meta"]
    for key in ("token_grid", "codebook_size"):
      if old.get(key) != self.meta[key]:
        raise UserError(f"token dataset {self.directory} has {key}={old.get(key)}, "
                        f"this writer has {self.meta[key]}; use another directory")

  @property
  def num_written(self) -> int:
    return sum(self._counts)

  def write(self, tokens: np.ndarray, caption: str) -> None:
    tokens = np.asarray(tokens).reshape(-1)
    if tokens.size != self._num_tokens:
      raise ValueError(f"expected {self._num_tokens} tokens (grid {self.meta['token_grid']}), "
                       f"got {tokens.size}")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= self.meta["codebook_size"]):
      raise ValueError(f"token ids must be in [0, {self.meta['codebook_size']}), "
                       f"got [{tokens.min()}, {tokens.max()}]")
    # Round-robin over shards keeps them equally sized without knowing the count.
    s = self._next
    self._writers[s].write(encode_token_record(tokens, caption, dtype=self._dtype))
    self._counts[s] += 1
    self._next = (s + 1) % len(self._writers)

  def close(self) -> None:
    if self._closed:
      return
    self._closed = True
    for w in self._writers:
      w.close()
    total_suffix = _SHARD_RE.match(self._names[0]).group("total")
    with _locked(self.directory):
      path = os.path.join(self.directory, INFO_FILE)
      if os.path.exists(path):
        info = read_info(self.directory)
      else:
        info = {"format": FORMAT, "version": VERSION, "meta": self.meta, "splits": {}}
      # Metadata beyond the checked keys: the latest writer's view wins.
      info["meta"] = {**info["meta"], **self.meta}
      entry = info["splits"].get(self.split, {"shards": {}})
      shards = {n: c for n, c in entry["shards"].items()
                if _SHARD_RE.match(n) and _SHARD_RE.match(n).group("total") == total_suffix}
      shards.update(dict(zip(self._names, self._counts)))
      info["splits"][self.split] = {"num_records": sum(shards.values()), "shards": shards}
      files.write_json(path, info, sort_keys=True)

  def discard(self) -> None:
    """Closes the shards without publishing them and deletes their files."""
    if self._closed:
      return
    self._closed = True
    for w, name in zip(self._writers, self._names):
      w.close()
      path = os.path.join(self.directory, name)
      if os.path.exists(path):
        os.remove(path)

  def __enter__(self) -> TokenRecordWriter:
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is None:
      self.close()
    else:
      # Don't publish a partial split in dataset_info.json.
      self._closed = True
      for w in self._writers:
        w.close()


class TokenRecordSource:
  """Grain random-access source over one split: `source[i]` is record bytes
  (decode with `decode_token_record`); `meta` is the dataset metadata."""

  def __init__(self, directory: str, split: str):
    from grain.sources import ArrayRecordDataSource  # pylint: disable=g-import-not-at-top
    info = read_info(directory)
    if split not in info["splits"]:
      raise UserError(f"token dataset {directory} has no split {split!r}; "
                      f"splits: {sorted(info['splits'])}")
    entry = info["splits"][split]
    names = sorted(entry["shards"])
    paths = [os.path.join(directory, n) for n in names]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
      raise UserError(f"token dataset shard missing: {missing[0]}")
    self.meta = info["meta"]
    self.directory, self.split = directory, split
    self._source = ArrayRecordDataSource(paths)
    if len(self._source) != entry["num_records"]:
      raise UserError(f"token dataset {directory} split {split!r}: {INFO_FILE} says "
                      f"{entry['num_records']} records, shards hold {len(self._source)}")

  @property
  def num_tokens(self) -> int:
    return int(np.prod(self.meta["token_grid"]))

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> bytes:
    return self._source[int(index)]

  def __iter__(self) -> Iterator[tuple[np.ndarray, str]]:
    """Decoded records in storage order (for tools and tests)."""
    for i in range(len(self)):
      yield decode_token_record(self[i])

  def __repr__(self) -> str:
    return f"TokenRecordSource({self.directory!r}, {self.split!r}, {len(self)} records)"


def write_code_appearance(directory: str, sums: np.ndarray, counts: np.ndarray) -> str:
  """Writes per-code patch means from their sums (K, F) and counts (K,)."""
  counts = np.asarray(counts, np.int64)
  mean = np.asarray(sums, np.float64) / np.maximum(counts, 1)[:, None]
  path = os.path.join(directory, APPEARANCE_FILE)
  with files.atomic_path(path, suffix=".npz") as tmp:
    np.savez(tmp, mean=mean.astype(np.float32), count=counts)
  return path


def read_code_appearance(directory: str) -> tuple[np.ndarray, np.ndarray]:
  """(mean float32 (K, F), count int64 (K,)) of a token dataset; UserError if absent."""
  path = os.path.join(directory, APPEARANCE_FILE)
  if not os.path.exists(path):
    raise UserError(f"token dataset {directory} has no {APPEARANCE_FILE} (written by "
                    f"`vlgen encode` when it encodes the train split); re-run vlgen encode")
  try:
    with np.load(path, allow_pickle=False) as f:
      mean, count = np.asarray(f["mean"], np.float32), np.asarray(f["count"], np.int64)
  except (OSError, ValueError, KeyError) as e:
    raise UserError(f"unreadable {path}: {e}") from None
  if mean.ndim != 2 or count.shape != (mean.shape[0],):
    raise UserError(f"{path}: mean {mean.shape} and count {count.shape} do not match")
  return mean, count
