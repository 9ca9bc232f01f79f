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
  parser.add_argument("--overwrite", action="store_true",
                      help="replace an existing --output (kept until the new one is complete)")
  # Fault injection for tests/reliability: SIGTERM to itself after N batches.
  parser.add_argument("--debug-sigterm-after-batches", type=int, default=0,
                      help=argparse.SUPPRESS)


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
                 patch_stats: PatchStats | None = None, should_stop=None
                 ) -> dict[str, int] | None:
  """Encodes this process's share of `source` into `writer`; returns counts,
  or None if `should_stop()` (asked before each batch) said to stop.
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
      if should_stop is not None and should_stop():
        bar.close()
        return None
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


PROGRESS_FILE = "encode_progress.json"


def _sync(name: str) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def run(args) -> int:
  """Validates every option, then encodes into `<output>.partial` under the
  output's lock, one split at a time; SIGTERM/SIGINT stop at the next batch
  (exit 143/130) and a rerun with the same options resumes after the last
  finished split. The output appears (or replaces the old one, --overwrite)
  only when complete."""
  import contextlib  # pylint: disable=g-import-not-at-top
  import signal  # pylint: disable=g-import-not-at-top

  from vlgen_jax import locks, partial as partial_lib  # pylint: disable=g-import-not-at-top
  from vlgen_jax.train import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  mesh_lib.maybe_initialize_distributed()
  import jax  # pylint: disable=g-import-not-at-top

  from vlgen_jax.config import load_config  # pylint: disable=g-import-not-at-top
  from vlgen_jax.data import pipeline, sources, token_records  # pylint: disable=g-import-not-at-top
  from vlgen_jax.train import checkpoint  # pylint: disable=g-import-not-at-top
  from vlgen_jax.train.preemption import StopSignals  # pylint: disable=g-import-not-at-top
  from vlgen_jax.vq.api import VQTokenizer  # pylint: disable=g-import-not-at-top

  if not os.path.isdir(args.workdir):
    raise UserError(f"--workdir {args.workdir} does not exist")
  if args.batch_size < 1 or args.num_shards < 1 or args.threads < 1:
    raise UserError("--batch-size, --num-shards and --threads must be >= 1")
  partial_lib.check_output(args.output, args.overwrite)
  output = os.path.normpath(args.output)
  items = [s.strip() for s in args.splits.split(",") if s.strip()]
  if not items:
    raise UserError("--splits is empty")
  # "train[:1000]" is written as split "train"; "validation=train[95%:]" as "validation".
  named = [(n.strip(), sp.strip()) if eq else (None, item)
           for item in items for n, eq, sp in [item.partition("=")]]
  splits = [split for _, split in named]
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
  pcount, pindex = jax.process_count(), jax.process_index()
  # Every split opens (and is sized) before any is encoded.
  split_sources = {split: pipeline.make_source(data, split) for split in splits}
  names = [name or sources.parse_split(split)[0] for name, split in named]
  if len(set(names)) != len(names):
    raise UserError(f"--splits writes a split twice: {', '.join(names)} "
                    "(name slices of one split with NAME=SPLIT)")
  for split, source in split_sources.items():
    per_process = len(source) // pcount
    if args.num_shards > max(1, per_process):
      raise UserError(f"--num-shards {args.num_shards} is more than the {per_process} records "
                      f"per process of split {split}; use at most {max(1, per_process)}")

  tokenizer = VQTokenizer.from_workdir(args.workdir, step=args.step)
  if int(data.resolution) != tokenizer.resolution:
    raise UserError(f"data.resolution={data.resolution} but the tokenizer was trained at "
                    f"{tokenizer.resolution}")
  devices = tokenizer.mesh.devices.size
  batch_size = -(-args.batch_size // devices) * devices
  step = checkpoint.export_step(args.workdir)
  meta = {"token_grid": list(tokenizer.token_grid), "codebook_size": tokenizer.num_codes,
          "resolution": tokenizer.resolution, "vq_workdir": os.path.abspath(args.workdir),
          "vq_step": args.step if args.step is not None else step,
          "data": {"source": data.source, "name": data.get("name", ""),
                   "data_dir": data.get("data_dir", "")}}
  # What must match for a rerun to resume an interrupted encode.
  options = {"meta": meta, "splits": items, "num_shards": args.num_shards,
             "batch_size": batch_size, "process_count": pcount,
             "data": json.loads(data.to_json())}
  primary = pindex == 0
  batches = [0]

  def stop_after_debug_batches():
    batches[0] += 1
    if batches[0] == args.debug_sigterm_after_batches + 1:
      os.kill(os.getpid(), signal.SIGTERM)

  out = partial_lib.PartialOutput(output, options, PROGRESS_FILE)
  partial = out.path
  with locks.output_lock(output) if primary else contextlib.nullcontext():
    # Again, now that no other encode can write it.
    partial_lib.check_output(output, args.overwrite)
    progress = out.open({}) if primary else None
    if progress is not None and progress["done"]:
      print(f"resuming {partial}: splits done: {', '.join(progress['done'])}", flush=True)
    _sync("vlgen_encode_partial")
    if progress is None:
      progress = out.read()
    with StopSignals() as signals:

      def should_stop():
        if args.debug_sigterm_after_batches:
          stop_after_debug_batches()
        return signals.agree()

      for split, split_name in zip(splits, names):
        if split_name in progress["done"]:
          continue
        source = split_sources[split]
        writer = token_records.TokenRecordWriter(
            partial, split_name, args.num_shards, meta, process_index=pindex, process_count=pcount)
        # What each code looks like in the training images (model.code_embedding
        # = "appearance" reads it).
        stats = (PatchStats(tokenizer.num_codes, tokenizer.model_config.factor)
                 if split_name == "train" else None)
        try:
          counts = encode_split(tokenizer, source, writer, batch_size=batch_size,
                                process_index=pindex, process_count=pcount,
                                threads=args.threads, progress=primary, patch_stats=stats,
                                should_stop=should_stop)
        except BaseException:
          writer.discard()
          raise
        if counts is None:
          writer.discard()
          done = ", ".join(progress["done"]) or "none"
          print(f"stopped by {signal.Signals(signals.received).name} during split {split}; "
                f"finished splits kept in {partial} ({done}); rerun the same command to resume",
                flush=True)
          if signals.received == signal.SIGINT:
            raise KeyboardInterrupt
          return partial_lib.STOPPED
        writer.close()
        if stats is not None:
          sums, code_counts = stats.all_processes()
          if primary:
            token_records.write_code_appearance(partial, sums, code_counts)
        _sync(f"vlgen_encode_{split_name}")
        if primary:
          progress["done"][split_name] = counts
          out.save(progress)
          print(f"{split}: " + json.dumps(counts, sort_keys=True), flush=True)
    _sync("vlgen_encode_done")
    if primary:
      out.publish()
      print(f"wrote {output}", flush=True)
  return 0
