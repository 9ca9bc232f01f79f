"""A user's captioned image dataset, as `vlgen demo --data DIR` finds it.

    DIR/train/          required
    DIR/validation/     optional

Each split folder is either a captioned image folder (`captions.tsv`:
`filename<TAB>caption` per line, images next to it; data.source=folder) or
img2dataset/WebDataset shards (`*.tar` holding KEY.jpg|png|webp + KEY.txt;
data.source=tar). The kind is detected from the files, never configured.
Without `validation/`, the last `holdout` records of train are held out:
train is read as `train[:N-k]` and validation as `train[N-k:]` (slices the
pipeline and `vlgen encode` understand), and both are recorded in the recipe.
"""
from __future__ import annotations

import dataclasses
import glob
import os

import numpy as np

from vlgen_jax.data import decode, sources
from vlgen_jax.errors import UserError

SPLIT_FOLDERS = ("train", "validation")


@dataclasses.dataclass(frozen=True)
class Layout:
  data_dir: str          # DIR (absolute)
  source: str            # "folder" | "tar"
  train_split: str       # "train" or "train[:N-k]"
  validation_split: str  # "validation" or "train[N-k:]"
  num_train: int         # records of train_split (bad ones included: skipped later)
  num_validation: int
  validation_held_out: bool  # validation is a slice of train/

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


def _kind(folder: str) -> str:
  """"folder" | "tar" for one split folder; a UserError for anything else."""
  if not os.path.isdir(folder):
    raise UserError(f"{folder} is not a folder")
  names = os.listdir(folder)
  has_tsv = sources.CAPTIONS_TSV in names
  has_tar = bool(glob.glob(os.path.join(folder, "*.tar")))
  if has_tsv and has_tar:
    raise UserError(f"{folder} holds both {sources.CAPTIONS_TSV} and *.tar shards; "
                    "keep one kind per split folder")
  if has_tsv:
    return "folder"
  if has_tar:
    return "tar"
  images = [n for n in names if n.lower().endswith(sources.IMAGE_EXTENSIONS)]
  if images:
    raise UserError(f"{folder} has images but no captions: add {sources.CAPTIONS_TSV} "
                    "(filename<TAB>caption per line) or use *.tar shards with KEY.txt captions")
  raise UserError(f"{folder} is empty: expected {sources.CAPTIONS_TSV} + images or *.tar shards")


def _open(data_dir: str, source: str, split: str):
  from vlgen_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  cfg = pipeline.default_data_config()
  cfg.source, cfg.data_dir = source, data_dir
  return pipeline.make_source(cfg, split)


def detect(data_dir: str, *, holdout_fraction: float = 0.05, max_holdout: int = 1000,
           min_train: int = 8) -> Layout:
  """The layout of DIR, or a UserError saying what is wrong with it."""
  if not data_dir or not os.path.isdir(data_dir):
    raise UserError(f"--data {data_dir!r} is not a folder")
  data_dir = os.path.abspath(data_dir)
  train_dir = os.path.join(data_dir, "train")
  if not os.path.isdir(train_dir):
    raise UserError(f"{data_dir} has no train/ folder (expected train/ and optionally "
                    "validation/, each with captions.tsv + images or *.tar shards)")
  source = _kind(train_dir)
  n = len(_open(data_dir, source, "train"))
  if n == 0:
    raise UserError(f"{train_dir} holds no records")
  val_dir = os.path.join(data_dir, "validation")
  if os.path.isdir(val_dir):
    val_source = _kind(val_dir)
    if val_source != source:
      raise UserError(f"train/ is {source} data but validation/ is {val_source}; use one kind")
    n_val = len(_open(data_dir, source, "validation"))
    if n_val == 0:
      raise UserError(f"{val_dir} holds no records")
    if n < min_train:
      raise UserError(f"{train_dir} holds {n} records; at least {min_train} are needed")
    return Layout(data_dir, source, "train", "validation", n, n_val, False)
  k = min(max_holdout, max(1, int(round(n * holdout_fraction))))
  if n - k < min_train:
    raise UserError(f"{train_dir} holds {n} records: too few to hold out a validation slice "
                    f"and train on at least {min_train} (add a validation/ folder)")
  return Layout(data_dir, source, f"train[:{n - k}]", f"train[{n - k}:]", n - k, k, True)


def sample_images(layout: Layout, resolution: int, num: int = 64) -> list[np.ndarray]:
  """Up to `num` decodable train images at `resolution` (uint8), evenly spread
  over the split; bad records are passed over."""
  src = _open(layout.data_dir, layout.source, layout.train_split)
  out = []
  for i in np.linspace(0, len(src) - 1, min(len(src), num * 2)).astype(int):
    raw = src[int(i)]
    if raw.get("image") is None:
      continue
    try:
      image, _ = decode.load_image(raw["image"], resolution)
    except decode.BadRecord:
      continue
    out.append(decode.from_model_range(image))
    if len(out) == num:
      break
  if not out:
    raise UserError(f"no decodable image among the first records of {layout.data_dir}/train")
  return out


def sample_captions(layout: Layout, num: int = 256) -> list[str]:
  """Up to `num` valid train captions, evenly spread over the split."""
  src = _open(layout.data_dir, layout.source, layout.train_split)
  out = []
  for i in np.linspace(0, len(src) - 1, min(len(src), num)).astype(int):
    try:
      out.append(decode.decode_caption(src[int(i)]["caption"]))
    except decode.BadRecord:
      continue
  return out
