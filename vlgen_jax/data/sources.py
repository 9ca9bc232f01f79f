"""Random-access record sources for the input pipeline.

Every source implements Grain's `RandomAccessDataSource` protocol
(`__len__`, `__getitem__`) and returns *raw* records,
`{"key": str, "image": bytes | array | None, "caption": Any | None}`, where
`None` means the file is missing, plus `"error": reason` for a record that
could not be read at all. Decoding and validation happen later in the
pipeline, so a bad record becomes a counted skip instead of an exception
(see decode.py).

- `TarShardSource`: img2dataset/WebDataset shards (`00000.tar` holding
  `KEY.jpg|KEY.jpeg|KEY.png|KEY.webp` and `KEY.txt`). Members are indexed
  once (tar header offsets); records are served with `os.pread`, so reading is
  random access and thread-safe. Every key seen is a record: an image without
  a `.txt` (or the reverse) is served with the missing half as `None`. A key
  that occurs twice in a shard (its caption or image again) makes all its
  records bad records (skipped and counted), never pairs across them.
- `FolderSource`: a folder with `captions.tsv` (`filename<TAB>caption` per
  line, optional `filename<TAB>caption` header) and the images next to it
  (subfolders allowed). Every line is a record; its image is read on access.
- `TfdsSource`: a prepared TFDS dataset in ArrayRecord format
  (`builder.as_data_source`), images left encoded (decoded by decode.py).
"""
from __future__ import annotations

import codecs
import glob
import logging
import os
import re
import tarfile
import threading
from typing import Any, Sequence

import numpy as np

from vlgen_jax.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")  # preference order
CAPTION_EXTENSION = ".txt"
CAPTIONS_TSV = "captions.tsv"

_log = logging.getLogger(__name__)


def _split_member_name(name: str) -> tuple[str, str]:
  """`dir/000123.jpg` -> (`dir/000123`, `.jpg`); WebDataset keys end at the
  first dot of the basename (`a.b.jpg` belongs to key `a`, extension `.b.jpg`)."""
  head, base = os.path.split(name)
  dot = base.find(".")
  if dot <= 0:
    return name, ""
  return os.path.join(head, base[:dot]) if head else base[:dot], base[dot:].lower()


class TarShardSource:
  """Records of WebDataset tar shards, by random access."""

  def __init__(self, paths: Sequence[str] | str, *, show_progress: bool = True):
    self._paths = _resolve_tar_paths(paths)
    keys, shard, img_off, img_len, txt_off, txt_len = [], [], [], [], [], []
    duplicate_keys = []
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    bar = tqdm(self._paths, desc="indexing tar shards", unit="shard",
               disable=not show_progress or len(self._paths) < 2)
    for s, path in enumerate(bar):
      # One entry per record: [key, img_off, img_len, img_rank, txt_off, txt_len, duplicate].
      entries: list[list] = []
      latest: dict[str, list] = {}  # key -> its latest entry
      try:
        with tarfile.open(path, "r:") as tar:
          for member in tar:
            if not member.isfile():
              continue
            key, ext = _split_member_name(member.name)
            is_image = ext in IMAGE_EXTENSIONS
            if not is_image and ext != CAPTION_EXTENSION:
              continue  # .json / .parquet sidecars of img2dataset
            entry = latest.get(key)
            if entry is not None and (entry[4] >= 0 if not is_image else entry[1] >= 0 and
                                      IMAGE_EXTENSIONS.index(ext) == entry[3]):
              # The key's caption (or this image) again: a second record with
              # the same key; nothing is paired across the two.
              entry = None
              duplicate = True
            else:
              duplicate = False
            if entry is None:
              entry = [key, -1, 0, len(IMAGE_EXTENSIONS), -1, 0, duplicate]
              entries.append(entry)
              latest[key] = entry
            if is_image:
              rank = IMAGE_EXTENSIONS.index(ext)
              if rank < entry[3]:
                entry[1], entry[2], entry[3] = member.offset_data, member.size, rank
            else:
              entry[4], entry[5] = member.offset_data, member.size
      except (tarfile.TarError, OSError) as e:
        # A damaged shard keeps the records indexed before the damage.
        _log.warning("tar shard %s: %s (kept %d keys)", path, e, len(entries))
      # Every record of a key that occurs twice is skipped: which of them is
      # the intended one is unknown.
      repeated = {e[0] for e in entries if e[6]}
      for e in entries:
        keys.append(e[0])
        shard.append(s)
        img_off.append(e[1]); img_len.append(e[2]); txt_off.append(e[4]); txt_len.append(e[5])
        duplicate_keys.append(e[0] in repeated)
    self._keys = keys
    self._duplicate = np.asarray(duplicate_keys, bool)
    self._shard = np.asarray(shard, np.int32)
    self._img = np.stack([np.asarray(img_off, np.int64), np.asarray(img_len, np.int64)], -1) \
        if keys else np.zeros((0, 2), np.int64)
    self._txt = np.stack([np.asarray(txt_off, np.int64), np.asarray(txt_len, np.int64)], -1) \
        if keys else np.zeros((0, 2), np.int64)
    self._fds: dict[int, int] = {}
    self._lock = threading.Lock()

  @property
  def paths(self) -> list[str]:
    return list(self._paths)

  def __len__(self) -> int:
    return len(self._keys)

  def _fd(self, s: int) -> int:
    fd = self._fds.get(s)
    if fd is None:
      with self._lock:
        fd = self._fds.get(s)
        if fd is None:
          fd = self._fds[s] = os.open(self._paths[s], os.O_RDONLY)
    return fd

  def _read(self, s: int, off: int, n: int) -> bytes | None:
    if off < 0:
      return None
    try:
      data = os.pread(self._fd(s), int(n), int(off))
    except OSError:
      return None
    return data if len(data) == n else None

  def __getitem__(self, index: int) -> dict[str, Any]:
    index = int(index)
    s = int(self._shard[index])
    if self._duplicate[index]:
      from vlgen_jax.data.decode import BAD_RECORD  # pylint: disable=g-import-not-at-top
      return {"key": self._keys[index], "image": None, "caption": None, "error": BAD_RECORD,
              "detail": f"key {self._keys[index]} occurs more than once in {self._paths[s]}"}
    return {
        "key": self._keys[index],
        "image": self._read(s, *self._img[index]),
        "caption": self._read(s, *self._txt[index]),
    }

  def __repr__(self) -> str:
    return f"TarShardSource({len(self._paths)} shards, {len(self)} records)"

  # File descriptors are per process; worker processes reopen lazily.
  def __getstate__(self):
    state = self.__dict__.copy()
    state["_fds"] = {}
    del state["_lock"]
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()

  def close(self) -> None:
    with self._lock:
      for fd in self._fds.values():
        os.close(fd)
      self._fds.clear()

  def __del__(self):
    try:
      self.close()
    except Exception:  # pylint: disable=broad-except
      pass


def _resolve_tar_paths(paths: Sequence[str] | str) -> list[str]:
  """A directory (its `*.tar`), a glob pattern, or a list of files."""
  if isinstance(paths, (str, os.PathLike)):
    p = os.fspath(paths)
    if os.path.isdir(p):
      found = sorted(glob.glob(os.path.join(p, "*.tar")))
    else:
      found = sorted(glob.glob(p))
    if not found:
      raise UserError(f"no .tar shards found at {p}")
    return found
  found = [os.fspath(p) for p in paths]
  missing = [p for p in found if not os.path.isfile(p)]
  if missing:
    raise UserError(f"tar shard not found: {missing[0]}")
  if not found:
    raise UserError("no tar shards given")
  return found


class FolderSource:
  """Records of a folder of images described by `captions.tsv`."""

  def __init__(self, folder: str):
    self._root = os.path.realpath(folder)
    tsv = os.path.join(self._root, CAPTIONS_TSV)
    if not os.path.isfile(tsv):
      raise UserError(f"{CAPTIONS_TSV} not found in {folder}")
    with open(tsv, "rb") as f:
      data = f.read()
    # Spreadsheet exports start with a UTF-8 byte order mark.
    lines = data.removeprefix(codecs.BOM_UTF8).split(b"\n")
    self._names: list[str] = []
    self._captions: list[bytes] = []
    for i, line in enumerate(lines):
      line = line.rstrip(b"\r")
      if not line.strip():
        continue
      name, tab, caption = line.partition(b"\t")
      if i == 0 and name.strip().lower() == b"filename" and caption.strip().lower() == b"caption":
        continue  # header
      # A line without a tab has no caption: kept, and skipped later as empty.
      self._names.append(os.fsdecode(name.strip()))
      self._captions.append(caption if tab else b"")

  def __len__(self) -> int:
    return len(self._names)

  def _image_path(self, name: str) -> str | None:
    path = os.path.realpath(os.path.join(self._root, name))
    # Names pointing outside the folder are treated as missing, never read.
    if os.path.commonpath([path, self._root]) != self._root:
      return None
    return path

  def __getitem__(self, index: int) -> dict[str, Any]:
    index = int(index)
    name = self._names[index]
    path = self._image_path(name)
    image = None
    if path is not None:
      try:
        with open(path, "rb") as f:
          image = f.read()
      except OSError:  # missing, a directory, unreadable
        image = None
    return {"key": name, "image": image, "caption": self._captions[index]}

  def __repr__(self) -> str:
    return f"FolderSource({self._root!r}, {len(self)} records)"


def get_feature(example: dict, path: str) -> Any:
  """`a/b` -> example["a"]["b"] (TFDS nested features such as `captions/text`)."""
  node = example
  for part in path.split("/"):
    node = node[part]
  return node


class TfdsSource:
  """A prepared TFDS dataset read as ArrayRecord, image bytes left encoded.

  Fast path: when the image is an `Image` feature and the caption a `Text`
  feature (top level, or inside one `Sequence` such as coco's
  `captions/text`), records are read as raw `tf.train.Example` bytes and only
  those two features are pulled out of the proto (~15x faster than tfds'
  full numpy decoding of every feature). Other feature types take tfds'
  decoding path. A record that fails to parse is served with `error` set.
  """

  def __init__(self, name: str, split: str, data_dir: str | None, *,
               image_key: str | None, caption_key: str | None, download: bool = False,
               builder=None):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    if builder is None:
      try:
        builder = tfds.builder(name, data_dir=data_dir or None)
      except Exception as e:  # tfds raises several types for unknown names
        raise UserError(f"unknown TFDS dataset {name!r}: {str(e).splitlines()[0]}") from None
    if download:
      builder.download_and_prepare()
    elif not builder.is_prepared():
      raise UserError(f"TFDS dataset {name!r} is not prepared in {builder.data_dir} "
                      "(set data.download=True to let tfds prepare it)")
    features = builder.info.features
    self._image_key, self._caption_key = image_key, caption_key
    if image_key and "/" in image_key:
      raise UserError(f"image_key must be a top-level feature, got {image_key!r}")
    found = {}
    for key in (image_key, caption_key):
      if key:
        try:
          found[key] = _feature_path(features, key)
        except (KeyError, TypeError):
          raise UserError(f"TFDS dataset {name!r} has no feature {key!r}; "
                          f"features: {sorted(features.keys())}") from None
    image_ok = not image_key or (isinstance(found[image_key][0], tfds.features.Image)
                                 and found[image_key][1] == 0)
    caption_ok = not caption_key or (isinstance(found[caption_key][0], tfds.features.Text)
                                     and found[caption_key][1] <= 1)
    self._caption_is_list = bool(caption_key) and found[caption_key][1] == 1
    self._raw = image_ok and caption_ok
    try:
      if self._raw:
        self._source = builder.as_data_source(
            split=split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
      else:
        # Images stay encoded (decoded by decode.py, robustly and counted);
        # images we don't use are never decoded.
        decoders = {k: tfds.decode.SkipDecoding() for k, f in features.items()
                    if isinstance(f, tfds.features.Image)}
        self._source = builder.as_data_source(split=split, decoders=decoders or None)
    except Exception as e:  # unknown split names raise ValueError/KeyError
      raise UserError(f"TFDS dataset {name!r} has no split {split!r}: "
                      f"{str(e).splitlines()[0]}") from None
    self.info = builder.info

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    out = {"key": str(index), "image": None, "caption": None}
    try:
      if self._raw:
        out.update(example_fields(self._source[int(index)], self._image_key,
                                  self._caption_key, self._caption_is_list))
      else:
        ex = self._source[int(index)]
        if self._image_key:
          out["image"] = ex[self._image_key]
        if self._caption_key:
          out["caption"] = get_feature(ex, self._caption_key)
    except Exception as e:  # pylint: disable=broad-except
      # A corrupt record (bad proto, bad tensor) is skipped and counted.
      from vlgen_jax.data.decode import BAD_RECORD  # pylint: disable=g-import-not-at-top
      out["error"] = BAD_RECORD
      out["detail"] = f"{type(e).__name__}: {e}"
    return out

  def __repr__(self) -> str:
    return f"TfdsSource({self.info.full_name}, {len(self)} records)"


def example_fields(data: bytes, image_key: str | None, caption_key: str | None,
                   caption_is_list: bool) -> dict[str, Any]:
  """Image bytes and caption(s) of a serialized `tf.train.Example` (TFDS's
  record format; nested features are flattened to `a/b` keys)."""
  from tensorflow_datasets.proto import tf_example_pb2  # pylint: disable=g-import-not-at-top
  feature = tf_example_pb2.Example.FromString(data).features.feature
  out = {"image": None, "caption": None}
  if image_key and image_key in feature:
    values = feature[image_key].bytes_list.value
    out["image"] = values[0] if values else None
  if caption_key and caption_key in feature:
    values = list(feature[caption_key].bytes_list.value)
    out["caption"] = values if caption_is_list else (values[0] if values else None)
  return out


def _feature_path(features, path: str):
  """(feature at `a/b`, number of Sequence levels above it)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  node, depth = features, 0
  for part in path.split("/"):
    while isinstance(node, tfds.features.Sequence):
      node, depth = node.feature, depth + 1
    node = node[part]
  return node, depth


_SLICE_RE = re.compile(r"^(?P<name>[^\[\]]+)(\[(?P<start>-?\d+%?)?:(?P<stop>-?\d+%?)?\])?$")


def parse_split(split: str) -> tuple[str, slice]:
  """`train`, `train[:1000]`, `train[95%:]` -> (name, slice over records)."""
  m = _SLICE_RE.match(split.strip())
  if not m:
    raise UserError(f"bad split {split!r}; expected NAME or NAME[start:stop] (ints or percents)")
  return m.group("name"), slice(m.group("start"), m.group("stop"))


def apply_split_slice(n: int, sl: slice) -> range:
  def bound(v, default):
    if v is None:
      return default
    if v.endswith("%"):
      pct = int(v[:-1])
      return (n * pct) // 100 if pct >= 0 else n - (n * -pct) // 100
    return int(v)
  return range(n)[slice(bound(sl.start, 0), bound(sl.stop, n))]


class SlicedSource:
  """A contiguous (or percent) slice of another source."""

  def __init__(self, source, indices: range):
    self._source, self._indices = source, indices

  def __len__(self) -> int:
    return len(self._indices)

  def __getitem__(self, index: int):
    return self._source[self._indices[int(index)]]

  def __repr__(self) -> str:
    return f"SlicedSource({self._source!r}, {self._indices})"


def split_directory(data_dir: str, split_name: str) -> str:
  """tar/folder datasets: `DIR/<split>/` if it exists, else `DIR` for train."""
  sub = os.path.join(data_dir, split_name)
  if os.path.isdir(sub):
    return sub
  if split_name == "train":
    return data_dir
  raise UserError(f"no split {split_name!r}: expected a folder {sub} "
                  f"(or use a slice such as train[95%:])")
