"""`vlgen encode`: a dataset's splits -> VQ token grids, once, for stage 2.

    vlgen encode --workdir runs/vq --output data/shapes_tokens \\
        [--config configs/vq_shapes.py --config.data.data_dir=...] [--splits train,validation]

Reads the images and captions of each split (the data of `--config`, else of
the tokenizer's own run), encodes them with the tokenizer of `--workdir`
sharded over all devices and processes, and writes a token dataset
(vlgen_jax/data/token_records.py: ArrayRecord shards of msgpack
`{"tokens", "caption"}` records plus dataset_info.json) that the stage-2
input pipeline reads with `data.source=tokens`. A record with several
captions becomes one token record per caption. Undecodable records are
skipped and counted.

Process p of P encodes records [p*N/P, (p+1)*N/P) of every split and writes
its own shards; all processes step through the same number of global
batches (the last ones padded), as the sharded encode is collective.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os

from vlgen_jax.errors import UserError

HELP = "encode a dataset's images to VQ token grids for text-to-image training"


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--workdir", required=True, help="a `vlgen train` run of a vq config")
  parser.add_argument("--output", required=True, help="directory of the token dataset to write")
  parser.add_argument("--config", default=None,
                      help="config whose `data` section names the dataset to encode "
                           "(default: the tokenizer run's own config); accepts --config.data.*=")
  parser.add_argument("--splits", default="train,validation",
                      help="comma-separated splits to encode (default: train,validation); "
                           "NAME=SPLIT writes SPLIT as NAME, e.g. "
                           "train=train[:95%%],validation=train[95%%:]")
  parser.add_argument("--batch-size", type=int, default=256,
                      help="images per global batch (rounded up to a multiple of the devices)")
  parser.add_argument("--num-shards", type=int, default=4,
                      help="ArrayRecord shards per split and process")
  parser.add_argument("--step", type=int, default=None,
                      help="checkpoint step of the tokenizer (default: its export/latest)")
  parser.add_argument("--threads", type=int, default=4, help="image decoding threads")


def _records_of(raw: dict, resolution: int):
  """(image float [-1,1], [captions]) or raises BadRecord."""
  from vlgen_jax.data import decode  # pylint: disable=g-import-not-at-top
  if raw.get("error"):
    raise decode.BadRecord(decode.BAD_RECORD, str(raw["error"]))
  if raw.get("image") is None:
    raise decode.BadRecord(decode.MISSING_FILE, "no image")
  if raw.get("caption") is None:
    raise decode.BadRecord(decode.MISSING_FILE, "no caption")
  choices = decode.caption_choices(raw["caption"])
  if not choices:
    raise decode.BadRecord(decode.EMPTY_CAPTION, "no captions")
  captions = [decode.decode_caption(c) for c in choices]
  image, _ = decode.load_image(raw["image"], resolution)
  return image, captions


class PatchStats:
  """Per-code sums of the [0, 1] pixels of the patches the encoder mapped to
  each code, and their counts (token_records.APPEARANCE_FILE)."""

  def __init__(self, num_codes: int, factor: int):
    import jax  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    self.num_codes, self.factor = num_codes, factor
    self.sums = np.zeros((num_codes, factor * factor * 3), np.float64)
    self.counts = np.zeros((num_codes,), np.int64)
    self._batch = jax.jit(self._batch_fn)

  def _batch_fn(self, images, tokens, valid):
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    b, h, w, c = images.shape
    p = self.factor
    patches = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    patches = (patches.reshape(-1, p * p * c) + 1.0) / 2.0
    weight = jnp.repeat(valid.astype(jnp.float32), (h // p) * (w // p))
    ids = tokens.reshape(-1)
    return (jax.ops.segment_sum(patches * weight[:, None], ids, self.num_codes),
            jax.ops.segment_sum(weight, ids, self.num_codes))

  def add(self, images, tokens, valid) -> None:
    """images float [-1, 1] (B, R, R, 3), tokens (B, h, w), valid bool (B,)."""
    import numpy as np  # pylint: disable=g-import-not-at-top
    sums, counts = self._batch(images, tokens, valid)
    self.sums += np.asarray(sums, np.float64)
    self.counts += np.rint(np.asarray(counts)).astype(np.int64)

  def all_processes(self):
    """(sums, counts) summed over processes (collective)."""
    import jax  # pylint: disable=g-import-not-at-top
    if jax.process_count() == 1:
      return self.sums, self.counts
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    sums = multihost_utils.process_allgather(self.sums.astype("float32")).sum(0)
    counts = multihost_utils.process_allgather(self.counts.astype("int32")).sum(0)
    return sums, counts


def encode_split(tokenizer, source, writer, *, batch_size: int, process_index: int,
                 process_count: int, threads: int = 4, progress: bool = True,
                 patch_stats: PatchStats | None = None) -> dict[str, int]:
  """Encodes this process's share of `source` into `writer`; returns counts.
  With `patch_stats`, also adds each valid image's patches to it.

  Collective over all processes (same number of `tokenizer.encode_global`
  calls everywhere).
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  from vlgen_jax.data import decode  # pylint: disable=g-import-not-at-top

  n = len(source)
  lo, hi = process_index * n // process_count, (process_index + 1) * n // process_count
  local_batch = batch_size // process_count
  steps = -(-(-(-n // process_count)) // local_batch)  # same on every process
  counts = {"records": 0, "written": 0, "skipped": 0}
  res = tokenizer.resolution
  empty = np.zeros((res, res, 3), np.float32)

  def load(i):
    try:
      return _records_of(source[i], res), None
    except decode.BadRecord as e:
      return None, e.reason

  bar = tqdm(total=hi - lo, desc=f"encode {getattr(source, 'split', '')}".strip(), unit="img",
             disable=not progress, dynamic_ncols=True, mininterval=1.0)
  with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
    for s in range(steps):
      idx = range(min(lo + s * local_batch, hi), min(lo + (s + 1) * local_batch, hi))
      loaded = list(pool.map(load, idx))
      images = [r[0][0] if r[0] is not None else empty for r in loaded]
      images += [empty] * (local_batch - len(images))
      images = np.stack(images)
      tokens = tokenizer.encode_global(images)
      if patch_stats is not None:
        valid = np.zeros(local_batch, bool)
        valid[:len(loaded)] = [record is not None for record, _ in loaded]
        patch_stats.add(images, tokens, valid)
      for (record, reason), t in zip(loaded, tokens):
        counts["records"] += 1
        if record is None:
          counts["skipped"] += 1
          counts[reason] = counts.get(reason, 0) + 1
          continue
        for caption in record[1]:
          writer.write(t, caption)
          counts["written"] += 1
      bar.update(len(idx))
  bar.close()
  return counts


def run(args) -> int:
  from vlgen_jax.train import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  mesh_lib.maybe_initialize_distributed()
  import jax  # pylint: disable=g-import-not-at-top

  from vlgen_jax.config import load_config  # pylint: disable=g-import-not-at-top
  from vlgen_jax.data import pipeline, sources, token_records  # pylint: disable=g-import-not-at-top
  from vlgen_jax.train import checkpoint  # pylint: disable=g-import-not-at-top
  from vlgen_jax.vq.api import VQTokenizer  # pylint: disable=g-import-not-at-top

  if not os.path.isdir(args.workdir):
    raise UserError(f"--workdir {args.workdir} does not exist")
  if args.batch_size < 1 or args.num_shards < 1 or args.threads < 1:
    raise UserError("--batch-size, --num-shards and --threads must be >= 1")
  splits = [s.strip() for s in args.splits.split(",") if s.strip()]
  if not splits:
    raise UserError("--splits is empty")
  if args.config:
    config = load_config(args.config, args.config_overrides)
  else:
    from vlgen_jax.config import apply_override  # pylint: disable=g-import-not-at-top
    config = checkpoint.load_config(args.workdir)
    for item in args.config_overrides:
      apply_override(config, item)
  data = config.data
  if data.get("source", "tfds") == "tokens":
    raise UserError("--config's data is already a token dataset (data.source=tokens); "
                    "give a config whose data has images")

  tokenizer = VQTokenizer.from_workdir(args.workdir, step=args.step)
  if int(data.resolution) != tokenizer.resolution:
    raise UserError(f"data.resolution={data.resolution} but the tokenizer was trained at "
                    f"{tokenizer.resolution}")
  pcount, pindex = jax.process_count(), jax.process_index()
  devices = tokenizer.mesh.devices.size
  batch_size = -(-args.batch_size // devices) * devices
  step = checkpoint.export_step(args.workdir)
  meta = {"token_grid": list(tokenizer.token_grid), "codebook_size": tokenizer.num_codes,
          "resolution": tokenizer.resolution, "vq_workdir": os.path.abspath(args.workdir),
          "vq_step": args.step if args.step is not None else step,
          "data": {"source": data.source, "name": data.get("name", ""),
                   "data_dir": data.get("data_dir", "")}}
  summary = {}
  named = []
  for item in splits:
    name, eq, split = item.partition("=")
    # "train[:1000]" is written as split "train"; "validation=train[95%:]" as "validation".
    named.append((name.strip(), split.strip()) if eq else (sources.parse_split(item)[0], item))
  names = [n for n, _ in named]
  if len(set(names)) != len(names):
    raise UserError(f"--splits writes a split twice: {', '.join(names)} "
                    "(name slices of one split with NAME=SPLIT)")
  for split_name, split in named:
    source = pipeline.make_source(data, split)
    writer = token_records.TokenRecordWriter(
        args.output, split_name, args.num_shards, meta,
        process_index=pindex, process_count=pcount)
    # What each code looks like in the training images (model.code_embedding
    # = "appearance" reads it).
    stats = (PatchStats(tokenizer.num_codes, tokenizer.model_config.factor)
             if split_name == "train" else None)
    with writer:
      counts = encode_split(tokenizer, source, writer, batch_size=batch_size,
                            process_index=pindex, process_count=pcount, threads=args.threads,
                            progress=pindex == 0, patch_stats=stats)
    if stats is not None:
      sums, code_counts = stats.all_processes()
      if pindex == 0:
        token_records.write_code_appearance(args.output, sums, code_counts)
    summary[split] = counts
    if pindex == 0:
      print(f"{split}: " + json.dumps(counts, sort_keys=True))
  return 0
