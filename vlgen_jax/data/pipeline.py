"""Resumable Grain input pipeline: records -> per-process batches.

    source (tfds | tar | folder | tokens)           random access, raw records
      -> global shuffle (seeded, reshuffled every epoch) -> repeat (train)
      -> decode + tokenize (threads; bad records become counted skips)
      -> this process's share of every global batch
      -> batch (skipping bad records, counting them) -> prefetch

Global batch semantics: the shuffled record stream is cut into global batches
of `batch_size * process_count` records; process p takes records
`[p * batch_size, (p + 1) * batch_size)` of each. Stacking the per-process
batches in process order gives exactly the single-process batch of the same
step, as long as no record is skipped. A skipped record is replaced by the next
record of the same process, so processes never read each other's records and
each record is read once per epoch either way.

Iterator state (`get_state()` / `set_state()`, JSON-serializable) holds the
position and the data statistics, so a restored iterator yields exactly the
batches the original would have and its counts continue from the saved ones.

Data statistics (`data_stats(iterator)`, per process: sum over processes for
global counts): `records` read; skipped records by reason (`undecodable_image`,
`missing_file`, `bad_caption`, `empty_caption`, `bad_record`); kept records
with an event (`converted_mode`: converted to RGB, `truncated_caption`);
`dropped_remainder` (eval only: good records that did not fill a last batch);
`skipped` = the sum of the skip reasons.

Batches: `{"image": float32 (B, R, R, 3) in [-1, 1], "text_ids": int32 (B, L)}`
for image sources (`text_ids` only with a tokenizer), and
`{"image_tokens": int32 (B, h*w), "text_ids": int32 (B, L)}` for `tokens`.
Train iterators are endless; eval iterators (`train=False`) make one pass in
storage order, without shuffling, and drop the last incomplete batch of each
process (counted in `dropped_remainder`); with skipped records processes may
get different numbers of eval batches, so multi-process eval loops should run
a fixed number of steps (the trainer's `eval_steps`). `drop_remainder=False`
keeps the last, smaller batch instead, and `with_captions=True` adds the
caption strings (both for full passes such as `vlgen encode`).

In a Task:

    def input_iterator(self, split, *, batch_size, train, seed, process_index, process_count):
      it = pipeline.make_iterator(self.config.data, split=split, batch_size=batch_size,
                                  seed=seed, train=train, process_index=process_index,
                                  process_count=process_count)
      if train:
        self._train_iter = it
      return it

    def data_stats(self):
      return self._train_iter.stats() if self._train_iter is not None else {}
"""
from __future__ import annotations

import atexit
import importlib
import sys
import weakref
from typing import Any

import grain
import ml_collections
import numpy as np

from vlgen_jax.data import decode
from vlgen_jax.data.decode import BadRecord
from vlgen_jax.errors import UserError

SOURCES = ("tfds", "tar", "folder", "tokens")
STAT_KEYS = ("records",) + decode.SKIP_REASONS + decode.KEPT_EVENTS + ("dropped_remainder",)
_STATE_VERSION = 1


def default_data_config() -> ml_collections.ConfigDict:
  """`config.data`: every field of the input pipeline, with its meaning."""
  c = ml_collections.ConfigDict()
  # Where records come from: "tfds" (a prepared TFDS dataset in ArrayRecord
  # format), "tar" (WebDataset shards *.tar: KEY.jpg|png|jpeg|webp + KEY.txt),
  # "folder" (images + captions.tsv) or "tokens" (a `vlgen encode` token dataset).
  c.source = "tfds"
  # tfds: dataset name incl. config/version ("coco_captions",
  # "shapes/res64_train50000_val2000_heldout2000"). Unused by other sources.
  c.name = ""
  # tfds: TFDS data_dir ("" = TFDS default). tar/folder: directory of the data,
  # with one subfolder per split, or the data itself for split "train".
  # tokens: the token dataset directory. (Splits are the trainer's
  # config.train_split / config.eval_split; every source accepts slices such
  # as "train[:1000]" or "train[95%:]".)
  c.data_dir = ""
  # tfds: feature names; nested features with "/" ("captions/text"). A
  # caption feature holding several captions picks one at random per
  # record in training (seeded) and the first in eval.
  c.image_key = "image"
  c.caption_key = "caption"
  # Images are resized (shorter side) and center-cropped to this many pixels.
  c.resolution = 64
  # Text ids per caption incl. BOS and EOS; longer captions are truncated (counted).
  c.max_text_len = 32
  # SentencePiece model from `vlgen text-tokenizer` ("" = no text_ids).
  c.tokenizer = ""
  # Global shuffle of training records (an exact permutation per epoch, not
  # a buffer). shuffle_seed -1 uses the trainer's seed.
  c.shuffle = True
  c.shuffle_seed = -1
  # Threads decoding records, records decoded ahead, batches prefetched by a
  # background thread (0 disables).
  c.read_threads = 4
  c.read_buffer = 128
  c.prefetch = 2
  # tfds: let tfds download and prepare a missing dataset (datasets in
  # LOCAL_TFDS_BUILDERS are built on first use, nothing to download).
  c.download = False
  return c


# TFDS datasets that are built locally on first use (nothing to download),
# by the part of `data.name` before "/": a plug-in's function
# (name, data_dir) -> prepared tfds builder. Imported only when named.
LOCAL_TFDS_BUILDERS = {
    "shapes": "vlgen_jax.shapes.tfds_builder:prepare_from_name",
}


# ---- sources --------------------------------------------------------------

def make_source(data_config: ml_collections.ConfigDict, split: str):
  """The random-access source of `split` named by `data_config`."""
  from vlgen_jax.data import sources  # pylint: disable=g-import-not-at-top
  kind = data_config.source
  if kind not in SOURCES:
    raise UserError(f"unknown data.source {kind!r}; expected one of {SOURCES}")
  if kind == "tfds":
    return _tfds_source(data_config, split)
  if not data_config.data_dir:
    raise UserError(f"data.source={kind} needs data.data_dir")
  split_name, sl = sources.parse_split(split)
  if kind == "tokens":
    from vlgen_jax.data.token_records import TokenRecordSource  # pylint: disable=g-import-not-at-top
    src = TokenRecordSource(data_config.data_dir, split_name)
  else:
    directory = sources.split_directory(data_config.data_dir, split_name)
    src = sources.TarShardSource(directory) if kind == "tar" else sources.FolderSource(directory)
  if sl != slice(None, None):
    src = sources.SlicedSource(src, sources.apply_split_slice(len(src), sl))
  return src


def _tfds_source(data_config, split):
  from vlgen_jax.data import sources  # pylint: disable=g-import-not-at-top
  name = data_config.name
  if not name:
    raise UserError("data.source=tfds needs data.name (a TFDS dataset name)")
  builder = None
  local = LOCAL_TFDS_BUILDERS.get(name.split("/")[0].split(":")[0])
  if local:
    if not data_config.data_dir:
      raise UserError(f"data.name={name} is built on first use and needs data.data_dir "
                      "(where to build it)")
    module_name, _, fn_name = local.partition(":")
    prepare = getattr(importlib.import_module(module_name), fn_name)
    builder = prepare(name, data_config.data_dir)
  return sources.TfdsSource(name, split, data_config.data_dir or None,
                            image_key=data_config.image_key or None,
                            caption_key=data_config.caption_key or None,
                            download=data_config.download, builder=builder)


# ---- per-record processing -----------------------------------------------

class ImageTextProcessor:
  """Raw record -> (example | None, events). Never raises for bad data.

  Checks run cheapest first: image present, caption valid, image decodes; a
  record is counted under the first reason that fails. Captions are checked
  when they are used: with a tokenizer (`text_ids`) or `with_captions`
  (`caption` strings, e.g. for `vlgen encode`).
  """

  def __init__(self, resolution: int, tokenizer=None, max_text_len: int = 32,
               with_captions: bool = False):
    self.resolution = resolution
    self.tokenizer = tokenizer
    self.max_text_len = max_text_len
    self.with_captions = with_captions

  def __call__(self, raw: dict, rng: np.random.Generator | None = None):
    events = []
    try:
      if raw.get("error"):
        raise BadRecord(raw["error"], raw.get("detail", ""))
      if raw.get("image") is None:
        raise BadRecord(decode.MISSING_FILE, "no image")
      example = {}
      if self.tokenizer is not None or self.with_captions:
        caption = _pick_caption(raw.get("caption"), rng)
        if self.tokenizer is not None:
          example["text_ids"], truncated = self.tokenizer.encode(caption, self.max_text_len)
          if truncated:
            events.append(decode.TRUNCATED_CAPTION)
        if self.with_captions:
          example["caption"] = caption
      image, converted = decode.load_image(raw["image"], self.resolution)
      if converted:
        events.append(decode.CONVERTED_MODE)
      example["image"] = image
    except BadRecord as e:
      return None, (e.reason,)
    return example, tuple(events)


class TokenTextProcessor:
  """Token record bytes -> ({"image_tokens", "text_ids"} | None, events)."""

  def __init__(self, num_tokens: int, tokenizer, max_text_len: int):
    self.num_tokens = num_tokens
    self.tokenizer = tokenizer
    self.max_text_len = max_text_len

  def __call__(self, data: bytes, rng: np.random.Generator | None = None):
    from vlgen_jax.data.token_records import decode_token_record  # pylint: disable=g-import-not-at-top
    try:
      tokens, caption = decode_token_record(data)
      if tokens.size != self.num_tokens:
        raise BadRecord(decode.BAD_RECORD, f"{tokens.size} tokens, expected {self.num_tokens}")
      example = {"image_tokens": tokens}
      events = ()
      if self.tokenizer is not None:
        example["text_ids"], truncated = _encode_caption(caption, rng, self.tokenizer,
                                                         self.max_text_len)
        events = (decode.TRUNCATED_CAPTION,) if truncated else ()
    except BadRecord as e:
      return None, (e.reason,)
    return example, events


def _pick_caption(value, rng) -> str:
  """One valid caption of a record (a random one of several in training)."""
  if value is None:
    raise BadRecord(decode.MISSING_FILE, "no caption")
  choices = decode.caption_choices(value)
  if not choices:
    raise BadRecord(decode.EMPTY_CAPTION, "no captions")
  pick = 0 if rng is None or len(choices) == 1 else int(rng.integers(len(choices)))
  return decode.decode_caption(choices[pick])


def _encode_caption(value, rng, tokenizer, max_len):
  return tokenizer.encode(_pick_caption(value, rng), max_len)


# ---- process sharding ----------------------------------------------------

class ProcessBlocksMapDataset(grain.MapDataset):
  """Process `index`'s share of every global batch of `block * count` records.

  Local record j is global record (j // block) * block * count
  + index * block + j % block. A finite parent's last, partial global batch
  is split the same way (process 0 first).
  """

  def __init__(self, parent: grain.MapDataset, block: int, index: int, count: int):
    super().__init__(parent)
    self._block, self._index, self._count = block, index, count
    n = len(parent)
    if n >= sys.maxsize:
      self._length = sys.maxsize
    else:
      full, rest = divmod(n, block * count)
      self._length = full * block + min(max(rest - index * block, 0), block)

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, j):
    if isinstance(j, slice):
      return self.slice(j)
    g, k = divmod(j, self._block)
    return self._parent[g * self._block * self._count + self._index * self._block + k]

  def __str__(self) -> str:
    return f"ProcessBlocksMapDataset(block={self._block}, index={self._index}, count={self._count})"


# ---- batching with counts ------------------------------------------------

class BatchAndCountIterDataset(grain.IterDataset):
  """Stacks good examples into batches; counts skipped records and events.

  Elements of the parent are `(example | None, events)`; None is a skipped
  record whose reason is in `events`.
  """

  def __init__(self, parent: grain.IterDataset, batch_size: int, *,
               max_consecutive_skips: int, describe: str, drop_remainder: bool = True):
    super().__init__(parent)
    self._batch_size = batch_size
    self._max_skips = max_consecutive_skips
    self._describe = describe
    self._drop_remainder = drop_remainder

  def __iter__(self) -> BatchAndCountIterator:
    return BatchAndCountIterator(self._parent.__iter__(), self._batch_size,
                                 self._max_skips, self._describe, self._drop_remainder)


class BatchAndCountIterator(grain.DatasetIterator):

  def __init__(self, parent: grain.DatasetIterator, batch_size: int, max_skips: int,
               describe: str, drop_remainder: bool = True):
    super().__init__(parent)
    self._batch_size = batch_size
    self._max_skips = max_skips
    self._describe = describe
    self._drop_remainder = drop_remainder
    self._counts = {k: 0 for k in STAT_KEYS}

  def __next__(self) -> dict[str, np.ndarray]:
    examples = []
    consecutive_skips = 0
    while len(examples) < self._batch_size:
      try:
        example, events = next(self._parent)
      except StopIteration:
        if examples and not self._drop_remainder:
          break  # a last, smaller batch; the next call ends the iteration
        self._counts["dropped_remainder"] += len(examples)
        raise
      self._counts["records"] += 1
      for event in events:
        self._counts[event] += 1
      if example is None:
        consecutive_skips += 1
        # A dataset with no usable record would otherwise loop forever.
        if consecutive_skips >= self._max_skips:
          raise UserError(f"no usable record in {consecutive_skips} consecutive records of "
                          f"{self._describe}; data stats: {finish_stats(self._counts)}")
        continue
      consecutive_skips = 0
      examples.append(example)
    return {k: _stack([e[k] for e in examples]) for k in examples[0]}

  @property
  def counts(self) -> dict[str, int]:
    return self._counts

  def get_state(self) -> dict[str, Any]:
    return {"parent": self._parent.get_state(), "counts": dict(self._counts)}

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state["parent"])
    self._counts = {k: int(state["counts"].get(k, 0)) for k in STAT_KEYS}


def _stack(values: list) -> np.ndarray:
  if isinstance(values[0], str):
    return np.array(values, dtype=object)  # captions: host-side strings
  return np.stack(values)


class PipelineIterator(grain.DatasetIterator):
  """What `make_iterator` returns: batches, `get_state/set_state`, `stats()`.

  The state records which pipeline it belongs to (source, split, batch size,
  process index/count, seed): restoring it into a different one is a
  UserError rather than silently different data.
  """

  def __init__(self, parent: grain.DatasetIterator, batcher: BatchAndCountIterator,
               signature: dict):
    super().__init__(parent)
    self._batcher = batcher
    self._signature = signature
    self._final_counts = None
    _LIVE_ITERATORS.add(self)

  def __next__(self) -> dict[str, np.ndarray]:
    try:
      return next(self._parent)
    except StopIteration:
      # The prefetcher's state is that of the last batch it returned; the
      # records read after it (skips, the remainder) are only in the batcher,
      # which is idle now that its input has ended.
      self._final_counts = dict(self._batcher.counts)
      raise

  def get_state(self) -> dict[str, Any]:
    return {"version": _STATE_VERSION, "pipeline": dict(self._signature),
            "iterator": self._parent.get_state()}

  def set_state(self, state: dict[str, Any]) -> None:
    if not isinstance(state, dict) or "pipeline" not in state:
      # e.g. the run started on another kind of input (data.source changed).
      raise UserError("the checkpoint's data iterator state was not saved by this input "
                      "pipeline (was data.source or the data config changed?); resume with the "
                      "run's own config (its config.json) or start a new --workdir")
    if state.get("version") != _STATE_VERSION:
      raise UserError(f"input pipeline state has version {state.get('version')}, "
                      f"expected {_STATE_VERSION}")
    saved = state.get("pipeline", {})
    if saved != self._signature:
      diff = {k: (saved.get(k), v) for k, v in self._signature.items() if saved.get(k) != v}
      raise UserError(f"input pipeline state was saved for another pipeline "
                      f"(saved, now): {diff}; restore with the same data config, "
                      f"batch size and process count")
    self._parent.set_state(state["iterator"])
    self._final_counts = None

  def stats(self) -> dict[str, int]:
    if self._final_counts is not None:
      return finish_stats(self._final_counts)
    return finish_stats(_find_counts(self._parent.get_state()))

  def close(self) -> None:
    """Stops the prefetch threads. Also done at interpreter exit."""
    if self._closed:
      return
    super().close()
    # Grain's prefetch iterators clean up again in __del__; let that happen
    # now, while the modules it needs are still alive.
    self._parents = ()
    _LIVE_ITERATORS.discard(self)


_LIVE_ITERATORS: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_live_iterators() -> None:
  for it in list(_LIVE_ITERATORS):
    it.close()


def _find_counts(state: Any) -> dict:
  while isinstance(state, dict) and "counts" not in state:
    state = state.get("parent", state.get("iterator"))
  return state["counts"] if isinstance(state, dict) else {k: 0 for k in STAT_KEYS}


def finish_stats(counts: dict) -> dict[str, int]:
  out = {k: int(counts.get(k, 0)) for k in STAT_KEYS}
  out["skipped"] = sum(out[k] for k in decode.SKIP_REASONS)
  return out


def data_stats(iterator) -> dict[str, int]:
  """Counts of this process's iterator so far (see module doc)."""
  return iterator.stats()


# ---- the iterator --------------------------------------------------------

def make_iterator(data_config: ml_collections.ConfigDict, *, split: str, batch_size: int,
                  seed: int, train: bool, process_index: int | None = None,
                  process_count: int | None = None, tokenizer=None, source=None,
                  with_captions: bool = False, drop_remainder: bool = True):
  """Per-process batches of `split` as a Grain `DatasetIterator`.

  `batch_size` is per process; the global batch is `batch_size *
  process_count`. `process_index/count` default to jax's. `tokenizer` (a
  TextTokenizer) defaults to `data_config.tokenizer` if set; without one,
  batches carry no `text_ids`. `source` overrides `make_source(data_config,
  split)` (an already opened source). `with_captions` adds `caption`, an
  object array of str (image sources). `drop_remainder=False` (eval only)
  ends a pass with a smaller last batch instead of dropping it, so a pass
  such as `vlgen encode` sees every good record.
  """
  if batch_size < 1:
    raise UserError(f"batch size per process must be >= 1, got {batch_size}")
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  if tokenizer is None and data_config.tokenizer:
    from vlgen_jax.text.tokenizer import TextTokenizer  # pylint: disable=g-import-not-at-top
    tokenizer = TextTokenizer.from_file(data_config.tokenizer)
  if source is None:
    source = make_source(data_config, split)
  n = len(source)
  if n == 0:
    raise UserError(f"split {split!r} of {data_config.source} data has no records")

  if data_config.source == "tokens":
    if tokenizer is None:
      raise UserError("data.source=tokens needs a text tokenizer (data.tokenizer)")
    processor = TokenTextProcessor(int(np.prod(source.meta["token_grid"])), tokenizer,
                                   data_config.max_text_len)
  else:
    processor = ImageTextProcessor(data_config.resolution, tokenizer, data_config.max_text_len,
                                   with_captions=with_captions)

  shuffle_seed = seed if data_config.shuffle_seed < 0 else data_config.shuffle_seed
  ds = grain.MapDataset.source(source)
  if train:
    if data_config.shuffle:
      ds = ds.shuffle(seed=_seed32(shuffle_seed, 0))
    ds = ds.repeat(None)  # endless; the shuffle is reseeded every epoch
    # Seeded per global stream position: the same choice for any process count.
    ds = ds.random_map(processor, seed=_seed32(shuffle_seed, 1))
  else:
    ds = ds.map(processor)
  ds = ProcessBlocksMapDataset(ds, batch_size, process_index, process_count)

  read = grain.ReadOptions(num_threads=max(0, int(data_config.read_threads)),
                           prefetch_buffer_size=max(0, int(data_config.read_buffer)))
  it_ds = ds.to_iter_dataset(read)
  describe = f"{data_config.source} split {split!r} ({n} records)"
  if train and not drop_remainder:
    raise ValueError("drop_remainder=False is for finite (eval) passes")
  it_ds = BatchAndCountIterDataset(it_ds, batch_size, describe=describe,
                                   max_consecutive_skips=max(1, -(-n // process_count)),
                                   drop_remainder=drop_remainder)
  batcher = it_ds.__iter__()
  it = batcher
  prefetch = int(data_config.prefetch)
  if prefetch > 0:
    it = grain.experimental.ThreadPrefetchDatasetIterator(batcher, prefetch)
  signature = {"source": str(data_config.source), "split": split, "records": n,
               "batch_size": batch_size, "process_index": process_index,
               "process_count": process_count, "train": bool(train),
               "seed": int(shuffle_seed) if train else 0, "drop_remainder": bool(drop_remainder)}
  return PipelineIterator(it, batcher, signature)


def _seed32(seed: int, salt: int) -> int:
  """Distinct 32-bit seeds for the shuffle and the per-record randomness."""
  return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, salt]).generate_state(1)[0])
