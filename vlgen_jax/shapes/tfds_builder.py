"""TFDS builder `shapes` (ArrayRecord) and `prepare_shapes`, which builds it on first use.

Examples come from `vlgen_jax.shapes.scenes`; this module only turns them into
TFDS records. Shuffling is disabled, so record `i` of a split is
`scenes.sample_scene(split, i)`: the files are a pure function of the config
(two builds are byte-identical) and any record can be checked against its
regenerated scene. Readers shuffle (Grain does).

Building and reading do not import TensorFlow: images are PNG-encoded with
PIL and tfds serialises tf.Example with its own protos (a test pins this). If
TF was imported by something else, it is kept off GPUs.
"""
from __future__ import annotations

import dataclasses
import io
import os
import re
import sys
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image
from tensorflow_datasets.core import writer as writer_lib
from tensorflow_datasets.core.utils import tqdm_utils
from tensorflow_datasets.proto import tf_example_pb2

from vlgen_jax.errors import UserError
from vlgen_jax.shapes import scenes


def hide_gpus_from_tf() -> None:
  """Stops TF, if something imported it, from claiming accelerators JAX should own."""
  tf = sys.modules.get("tensorflow")
  if tf is None:
    return  # Not imported: it cannot claim anything. Do not pay for importing it.
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:
    pass  # TF already initialised its devices; nothing more can be done here.


_NAME_RE = re.compile(
    r"^shapes(/res(?P<res>\d+)_train(?P<train>\d+)_val(?P<val>\d+)_heldout(?P<heldout>\d+))?"
    r"(:[\d.]+)?$")


def config_name(resolution: int, train_size: int, validation_size: int, heldout_size: int) -> str:
  """Config name encoding everything that changes the records."""
  return f"res{resolution}_train{train_size}_val{validation_size}_heldout{heldout_size}"


@dataclasses.dataclass(eq=False)
class ShapesConfig(tfds.core.BuilderConfig):
  """Resolution and split sizes, e.g. `ShapesConfig(resolution=32, train_size=1000)`.

  The name is derived from them (pass none), so every config lives in its own
  directory. Raises ValueError for a bad resolution or size.
  """
  name: str = ""
  resolution: int = 64
  train_size: int = scenes.DEFAULT_SPLIT_SIZES["train"]
  validation_size: int = scenes.DEFAULT_SPLIT_SIZES["validation"]
  heldout_size: int = scenes.DEFAULT_SPLIT_SIZES["heldout"]

  def __post_init__(self):
    scenes.check_resolution(self.resolution)
    for split, size in self.split_sizes().items():
      if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"{split} size must be a positive int, got {size!r}")
    sizes = {k: int(v) for k, v in self.split_sizes().items()}
    self.train_size, self.validation_size, self.heldout_size = (
        sizes["train"], sizes["validation"], sizes["heldout"])
    expected = config_name(self.resolution, *sizes.values())
    if self.name and self.name != expected:
      raise ValueError(f"config name {self.name!r} does not match its fields ({expected!r})")
    self.name = expected
    self.description = self.description or (
        f"{self.resolution}x{self.resolution} px; train {sizes['train']}, validation "
        f"{sizes['validation']}, heldout {sizes['heldout']} examples")

  def split_sizes(self) -> dict[str, int]:
    return {"train": self.train_size, "validation": self.validation_size,
            "heldout": self.heldout_size}


def encode_png(image: np.ndarray) -> bytes:
  """PNG bytes with fixed encoder settings (deterministic for a given zlib)."""
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="PNG", compress_level=6, optimize=False)
  return buffer.getvalue()


def tfds_example(split: str, index: int, resolution: int) -> dict:
  """Example `index` of `split` as the builder's features expect it."""
  scene = scenes.sample_scene(split, index)
  objects = scene.objects
  return {
      # Pre-encoded with PIL: faster than tfds' TF-graph PNG encoder.
      "image": encode_png(scenes.render(scene, resolution)),
      "caption": scene.caption,
      "objects": {
          "shape": [o.shape for o in objects],
          "color": [o.color for o in objects],
          "size": [o.size for o in objects],
          "row": [o.row for o in objects],
          "col": [o.col for o in objects],
      },
  }


def canonical_example(serialized: bytes) -> bytes:
  """The tf.Example re-serialised with its feature map sorted by key."""
  return tf_example_pb2.Example.FromString(serialized).SerializeToString(deterministic=True)


class DeterministicExampleWriter(writer_lib.ExampleWriter):
  """Writes tf.Examples with sorted feature maps.

  Protobuf serialises map entries in hash order, which changes from process
  to process; without this, two builds of the same config differ in bytes.
  """

  def write(self, path, examples):
    return super().write(path, ((key, canonical_example(ex)) for key, ex in examples))


class Shapes(tfds.core.GeneratorBasedBuilder):
  """Procedural shapes with exact captions (docs/shapes.md)."""

  VERSION = tfds.core.Version(scenes.VERSION)
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [ShapesConfig(resolution=r) for r in scenes.RESOLUTIONS]
  DEFAULT_BUILDER_CONFIG_NAME = config_name(64, **{f"{k}_size": v
                                                    for k, v in scenes.DEFAULT_SPLIT_SIZES.items()})

  def _info(self) -> tfds.core.DatasetInfo:
    r = self.builder_config.resolution
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(r, r, 3), dtype=np.uint8, encoding_format="png"),
            "caption": tfds.features.Text(),
            "objects": tfds.features.Sequence({
                "shape": tfds.features.ClassLabel(names=scenes.SHAPES),
                "color": tfds.features.ClassLabel(names=scenes.COLOR_NAMES),
                "size": tfds.features.ClassLabel(names=scenes.SIZES),
                "row": tfds.features.Scalar(dtype=np.int32),
                "col": tfds.features.Scalar(dtype=np.int32),
            }),
        }),
        supervised_keys=("caption", "image"),
        homepage="docs/shapes.md",
        # Record i is example i: deterministic files, regenerable records.
        disable_shuffling=True,
    )

  def _example_writer(self) -> writer_lib.ExampleWriter:
    return DeterministicExampleWriter(file_format=self.info.file_format)

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    return {split: self._generate_examples(split, size)
            for split, size in self.builder_config.split_sizes().items()}

  def _generate_examples(self, split: str, size: int) -> Iterator[tuple[int, dict]]:
    resolution = self.builder_config.resolution
    for index in range(size):
      yield index, tfds_example(split, index, resolution)


def shapes_builder(data_dir: str | os.PathLike, resolution: int = 64,
                   train_size: int = scenes.DEFAULT_SPLIT_SIZES["train"],
                   validation_size: int = scenes.DEFAULT_SPLIT_SIZES["validation"],
                   heldout_size: int = scenes.DEFAULT_SPLIT_SIZES["heldout"]) -> Shapes:
  """The builder for this config under `data_dir` (not built yet, maybe)."""
  config = ShapesConfig(resolution=resolution, train_size=train_size,
                        validation_size=validation_size, heldout_size=heldout_size)
  # tfds wants the registered configs by name (it rejects an equal custom one).
  config = config.name if config.name in Shapes.builder_configs else config
  return Shapes(config=config, data_dir=os.fspath(data_dir), file_format="array_record")


def prepare_shapes(data_dir: str | os.PathLike, resolution: int = 64,
                   train_size: int = scenes.DEFAULT_SPLIT_SIZES["train"],
                   validation_size: int = scenes.DEFAULT_SPLIT_SIZES["validation"],
                   heldout_size: int = scenes.DEFAULT_SPLIT_SIZES["heldout"],
                   progress: bool = True) -> Shapes:
  """Builds `shapes` under `data_dir` if it is not there yet; returns the builder.

  Read it with `builder.as_data_source(split)` (random access, for Grain) or
  `tfds.data_source(f"shapes/{builder.builder_config.name}", data_dir=data_dir)`.
  Raises ValueError for a bad resolution or split size.
  """
  builder = shapes_builder(data_dir, resolution, train_size, validation_size, heldout_size)
  if builder.is_prepared():
    return builder
  hide_gpus_from_tf()
  was_active = getattr(tqdm_utils, "_active", True)
  tfds.display_progress_bar(progress)
  try:
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  finally:
    tfds.display_progress_bar(was_active)
  hide_gpus_from_tf()
  return builder


def prepare_from_name(name: str, data_dir: str | os.PathLike) -> Shapes:
  """The data pipeline's plug-in entry (`LOCAL_TFDS_BUILDERS`): builds the
  dataset a `data.name` such as "shapes/res64_train50000_val2000_heldout2000"
  names on first use (plain "shapes" = the spec's sizes at 64 px)."""
  m = _NAME_RE.match(name)
  if not m:
    raise UserError(f"data.name={name!r} is not a shapes dataset name; expected "
                    f"'shapes/{config_name(64, 50000, 2000, 2000)}' or 'shapes'")
  kwargs = {}
  if m.group("res"):
    kwargs = dict(resolution=int(m.group("res")), train_size=int(m.group("train")),
                  validation_size=int(m.group("val")), heldout_size=int(m.group("heldout")))
  try:
    return prepare_shapes(data_dir, **kwargs)
  except ValueError as e:
    raise UserError(f"data.name={name}: {e}") from None
