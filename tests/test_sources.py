"""Sources and robust decoding: tar shards and folders full of bad records.

Every kind of bad record is built programmatically; the pipeline must skip
and count exactly the unusable ones, convert the odd image modes, and deliver
every good record with the right pixels and caption.
"""
from __future__ import annotations

import io
import os
import pickle
import tarfile

import ml_collections
import numpy as np
import pytest
from PIL import Image

from vlgen_jax.data import decode, pipeline, sources
from vlgen_jax.errors import UserError
from vlgen_jax.text.tokenizer import TextTokenizer

RES = 16  # images are built at this size, so decoded pixels pass through unresized


def _rgb(seed: int) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (RES, RES, 3), dtype=np.uint8)


def _smooth(seed: int) -> np.ndarray:
  """A smooth image (JPEG keeps it close; noise it would not)."""
  y, x = np.mgrid[0:RES, 0:RES]
  base = np.random.default_rng(seed).integers(40, 200, 3)
  return np.clip(base + 4 * np.stack([x, y, x + y], -1) - 30, 0, 255).astype(np.uint8)


def _encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
  buf = io.BytesIO()
  img.save(buf, fmt, **kw)
  return buf.getvalue()


def build_records():
  """(name, image bytes | None, caption bytes | None, expected) for every case.

  expected is ("ok", rgb uint8 or None for lossy, converted?) or ("skip", reason).
  """
  recs = []
  for i in range(3):  # plain good PNGs
    img = _rgb(i)
    recs.append((f"good{i}", ".png", _encode(Image.fromarray(img)), f"good png {i}".encode(),
                 ("ok", img, False)))
  recs.append(("goodjpg", ".jpg", _encode(Image.fromarray(_smooth(10)), "JPEG", quality=95),
               b"good jpeg", ("ok", None, False)))
  recs.append(("goodwebp", ".webp", _encode(Image.fromarray(_rgb(11)), "WEBP", lossless=True),
               b"good webp", ("ok", _rgb(11), False)))
  gray = _rgb(20)[..., 0]
  recs.append(("gray", ".png", _encode(Image.fromarray(gray, "L")), b"grayscale image",
               ("ok", np.repeat(gray[..., None], 3, -1), True)))
  rgba = np.concatenate([_rgb(21), np.full((RES, RES, 1), 255, np.uint8)], -1)
  rgba[:4, :4, 3] = 0  # transparent corner: composited over white
  want = rgba[..., :3].copy()
  want[:4, :4] = 255
  recs.append(("rgba", ".png", _encode(Image.fromarray(rgba, "RGBA")), b"rgba image",
               ("ok", want, True)))
  pal = Image.fromarray(_rgb(22)).quantize(colors=16)
  recs.append(("palette", ".png", _encode(pal), b"palette image",
               ("ok", np.asarray(pal.convert("RGB")), True)))
  g16 = _rgb(23)[..., 0]
  img16 = Image.fromarray(g16.astype(np.uint16) * 257)  # full 16-bit range
  assert img16.mode.startswith("I;16")
  recs.append(("deep16", ".png", _encode(img16), b"sixteen bit image",
               ("ok", np.repeat(g16[..., None], 3, -1), True)))
  jpg = _encode(Image.fromarray(_rgb(30)), "JPEG")
  recs.append(("truncated", ".jpg", jpg[:len(jpg) // 2], b"truncated jpeg",
               ("skip", decode.UNDECODABLE_IMAGE)))
  recs.append(("garbage", ".jpg", np.random.default_rng(31).bytes(700), b"garbage bytes",
               ("skip", decode.UNDECODABLE_IMAGE)))
  good_png = _encode(Image.fromarray(_rgb(32)))
  recs.append(("emptycap", ".png", good_png, b"  \t ", ("skip", decode.EMPTY_CAPTION)))
  recs.append(("latin1cap", ".png", good_png, "caf\xe9 cr\xe8me".encode("latin-1"),
               ("skip", decode.BAD_CAPTION)))
  recs.append(("notxt", ".png", good_png, None, ("skip", decode.MISSING_FILE)))
  return recs


def write_tar(path, recs, extra_members=()):
  with tarfile.open(path, "w") as tar:
    def add(name, data):
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
    for name, ext, image, caption, _ in recs:
      if image is not None:
        add(name + ext, image)
      if caption is not None:
        add(name + ".txt", caption)
      add(name + ".json", b'{"status": "success"}')  # img2dataset sidecar, ignored
    for name, data in extra_members:
      add(name, data)


def write_folder(folder, recs, extra_lines=()):
  os.makedirs(folder, exist_ok=True)
  lines = [b"filename\tcaption"]
  for name, ext, image, caption, _ in recs:
    if image is not None:
      with open(os.path.join(folder, name + ext), "wb") as f:
        f.write(image)
    # No caption file in a folder: a missing caption is "no column".
    lines.append((name + ext).encode() + (b"\t" + caption if caption is not None else b""))
  lines.extend(extra_lines)
  with open(os.path.join(folder, sources.CAPTIONS_TSV), "wb") as f:
    f.write(b"\r\n".join(lines) + b"\r\n")


@pytest.fixture(scope="module")
def tokenizer():
  words = ["good png 0 1 2 jpeg webp grayscale rgba palette sixteen bit image",
           "truncated garbage bytes caption"]
  return TextTokenizer.train(words * 20, 96)


def _data_config(source: str, data_dir: str) -> ml_collections.ConfigDict:
  cfg = pipeline.default_data_config()
  cfg.source, cfg.data_dir, cfg.resolution, cfg.max_text_len = source, data_dir, RES, 16
  cfg.read_threads, cfg.read_buffer, cfg.prefetch = 2, 8, 1
  return cfg


def _read_all(cfg, tokenizer):
  """One eval pass, batch 1 (nothing dropped): decoded captions -> image, stats."""
  it = pipeline.make_iterator(cfg, split="train", batch_size=1, seed=0, train=False,
                              process_index=0, process_count=1, tokenizer=tokenizer)
  got = {}
  for batch in it:
    caption = tokenizer.decode_batch(batch["text_ids"])[0]
    assert caption not in got
    got[caption] = decode.from_model_range(batch["image"][0])
  stats = it.stats()
  it.close()
  return got, stats


def _expected(recs, overrides=None, extra=None):
  """name -> expected outcome ("ok", converted?) or ("skip", reason)."""
  out = {}
  for name, ext, _, _, exp in recs:
    out[name] = ("ok", exp[2]) if exp[0] == "ok" else exp
  out.update(overrides or {})
  out.update(extra or {})
  return out


def _check_each_record(source, tokenizer, expected):
  """Per record: the processor's verdict is the expected one."""
  proc = pipeline.ImageTextProcessor(RES, tokenizer, 16)
  verdicts = {}
  for i in range(len(source)):
    raw = source[i]
    example, events = proc(raw)
    name = os.path.splitext(raw["key"])[0]
    verdicts[name] = ("skip", events[0]) if example is None else (
        "ok", decode.CONVERTED_MODE in events)
  assert verdicts == expected


def _expected_counts(expected):
  counts = {k: 0 for k in pipeline.STAT_KEYS}
  for verdict in expected.values():
    counts["records"] += 1
    if verdict[0] == "skip":
      counts[verdict[1]] += 1
    elif verdict[1]:
      counts[decode.CONVERTED_MODE] += 1
  counts["skipped"] = sum(counts[k] for k in decode.SKIP_REASONS)
  return counts


def _check_good_records(recs, got):
  good = {cap.decode(): exp for _, _, _, cap, exp in recs if exp[0] == "ok"}
  assert set(got) == set(good)
  for caption, (_, want, _) in good.items():
    if want is None:  # lossy JPEG: close, not equal
      assert np.abs(got[caption].astype(int) - _smooth(10).astype(int)).mean() < 4
    else:
      np.testing.assert_array_equal(got[caption], want, err_msg=caption)


def test_tar_shards_skip_and_count_bad_records(tmp_path, tokenizer):
  recs = build_records()
  shard_dir = tmp_path / "shards"
  shard_dir.mkdir()
  # Two shards; the second also holds a caption whose image never came.
  write_tar(shard_dir / "00000.tar", recs[:8])
  write_tar(shard_dir / "00001.tar", recs[8:], extra_members=[("orphan.txt", b"lonely caption")])
  expected = _expected(recs, extra={"orphan": ("skip", decode.MISSING_FILE)})
  cfg = _data_config("tar", str(shard_dir))
  _check_each_record(pipeline.make_source(cfg, "train"), tokenizer, expected)
  got, stats = _read_all(cfg, tokenizer)
  _check_good_records(recs, got)
  assert stats == _expected_counts(expected)
  assert stats["skipped"] == 6 and stats[decode.CONVERTED_MODE] == 4


def test_folder_skips_and_counts_bad_records(tmp_path, tokenizer):
  recs = build_records()
  folder = tmp_path / "folder"
  write_folder(folder, recs, extra_lines=[
      b"gone.png\tlisted but never written",   # missing file
      b"../outside.png\tescapes the folder",   # never read: missing
      b"no_tab_line.png",                      # no caption column
  ])
  (tmp_path / "outside.png").write_bytes(_encode(Image.fromarray(_rgb(40))))
  (folder / "no_tab_line.png").write_bytes(_encode(Image.fromarray(_rgb(41))))
  expected = _expected(
      recs,
      # A folder has no caption files: the record without one is a line
      # without a caption column.
      overrides={"notxt": ("skip", decode.EMPTY_CAPTION)},
      extra={"gone": ("skip", decode.MISSING_FILE),
             "../outside": ("skip", decode.MISSING_FILE),
             "no_tab_line": ("skip", decode.EMPTY_CAPTION)})
  cfg = _data_config("folder", str(folder))
  _check_each_record(pipeline.make_source(cfg, "train"), tokenizer, expected)
  got, stats = _read_all(cfg, tokenizer)
  _check_good_records(recs, got)
  assert stats == _expected_counts(expected)
  assert stats["skipped"] == 8 and stats[decode.CONVERTED_MODE] == 4


def test_tar_source_random_access_and_pickling(tmp_path):
  recs = build_records()
  write_tar(tmp_path / "a.tar", recs[:5])
  write_tar(tmp_path / "b.tar", recs[5:])
  src = sources.TarShardSource(str(tmp_path))
  assert len(src) == len(recs)
  by_key = {src[i]["key"]: src[i] for i in reversed(range(len(src)))}
  for name, _, image, caption, _ in recs:
    assert by_key[name]["image"] == image
    assert by_key[name]["caption"] == caption
  clone = pickle.loads(pickle.dumps(src))
  assert clone[3] == src[3]
  src.close()
  assert clone[len(recs) - 1] == by_key[recs[-1][0]]


def test_tar_member_names_follow_webdataset_keys(tmp_path):
  png = _encode(Image.fromarray(_rgb(1)))
  jpg = _encode(Image.fromarray(_rgb(2)), "JPEG")
  mask = _encode(Image.fromarray(_rgb(3)))
  with tarfile.open(tmp_path / "s.tar", "w") as tar:
    # The key ends at the basename's first dot: `k2.seg.png` is another field
    # (e.g. a mask) of key k2, not its image.
    for name, data in [("dir/k1.png", png), ("dir/k1.jpg", jpg), ("dir/k1.txt", b"one"),
                       ("k2.seg.png", mask), ("k2.png", png), ("k2.txt", b"two"),
                       ("k3.seg.png", mask), ("k3.txt", b"three")]:
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  src = sources.TarShardSource(str(tmp_path / "s.tar"))
  recs = {src[i]["key"]: src[i] for i in range(len(src))}
  assert set(recs) == {"dir/k1", "k2", "k3"}
  assert recs["dir/k1"]["image"] == jpg  # .jpg ranks before .png
  assert recs["k2"]["image"] == png and recs["k2"]["caption"] == b"two"
  assert recs["k3"]["image"] is None and recs["k3"]["caption"] == b"three"


def test_damaged_shard_keeps_records_before_the_damage(tmp_path):
  recs = build_records()[:4]
  write_tar(tmp_path / "ok.tar", recs)
  data = (tmp_path / "ok.tar").read_bytes()
  (tmp_path / "ok.tar").write_bytes(data[:len(data) * 2 // 3] + b"\x00garbage" * 100)
  src = sources.TarShardSource(str(tmp_path))
  assert 1 <= len(src) <= len(recs)
  assert src[0]["key"] == "good0" and src[0]["image"] == recs[0][2]


def test_source_errors_are_user_errors(tmp_path):
  with pytest.raises(UserError, match="no .tar shards"):
    sources.TarShardSource(str(tmp_path))
  with pytest.raises(UserError, match="captions.tsv not found"):
    sources.FolderSource(str(tmp_path))
  with pytest.raises(UserError, match="no split 'validation'"):
    sources.split_directory(str(tmp_path), "validation")
  with pytest.raises(UserError, match="bad split"):
    sources.parse_split("train[1:2:3]")
  with pytest.raises(UserError, match="unknown data.source"):
    pipeline.make_source(_data_config("csv", str(tmp_path)), "train")
  with pytest.raises(UserError, match="needs data.data_dir"):
    pipeline.make_source(_data_config("folder", ""), "train")


def test_split_dirs_and_slices(tmp_path):
  for split, n in (("train", 10), ("validation", 4)):
    write_folder(tmp_path / split, [(f"{split}{i}", ".png", _encode(Image.fromarray(_rgb(i))),
                                     f"{split} {i}".encode(), None) for i in range(n)])
  cfg = _data_config("folder", str(tmp_path))
  assert len(pipeline.make_source(cfg, "train")) == 10
  val = pipeline.make_source(cfg, "validation")
  assert [val[i]["key"] for i in range(len(val))] == [f"validation{i}.png" for i in range(4)]
  assert [r["key"] for r in (lambda s: [s[i] for i in range(len(s))])(
      pipeline.make_source(cfg, "train[80%:]"))] == ["train8.png", "train9.png"]
  assert len(pipeline.make_source(cfg, "train[:3]")) == 3
  assert len(pipeline.make_source(cfg, "train[-10%:]")) == 1


@pytest.mark.parametrize("value,expected", [
    (b"  a  red\tcircle\n", "a red circle"),
    ("plain str", "plain str"),
    (np.bytes_(b"numpy bytes"), "numpy bytes"),
    (np.array(b"scalar array"), "scalar array"),
])
def test_decode_caption_accepts(value, expected):
  assert decode.decode_caption(value) == expected


@pytest.mark.parametrize("value,reason", [
    (b"\xff\xfe", decode.BAD_CAPTION),
    (b"", decode.EMPTY_CAPTION),
    (" \n ", decode.EMPTY_CAPTION),
    (3, decode.BAD_CAPTION),
    (np.array([b"a", b"b"]), decode.BAD_CAPTION),
])
def test_decode_caption_rejects(value, reason):
  with pytest.raises(decode.BadRecord) as e:
    decode.decode_caption(value)
  assert e.value.reason == reason


def test_resize_center_crop_geometry():
  # A wide image with a distinct center column block: resize keeps the shorter
  # side, crops the middle.
  img = np.zeros((20, 40, 3), np.uint8)
  img[:, 10:30] = 200
  out = decode.resize_center_crop(img, 10)
  assert out.shape == (10, 10, 3)
  assert (out[:, 2:8] == 200).all()
  tall = decode.resize_center_crop(np.zeros((50, 20, 3), np.uint8), 8)
  assert tall.shape == (8, 8, 3)
  small = decode.resize_center_crop(np.full((4, 6, 3), 7, np.uint8), 12)  # upsampled
  assert small.shape == (12, 12, 3) and (small == 7).all()


def test_model_range_round_trip():
  x = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, -1)
  y = decode.to_model_range(x)
  assert y.dtype == np.float32 and y.min() == -1.0 and y.max() == 1.0
  np.testing.assert_array_equal(decode.from_model_range(y), x)


def test_tfds_example_fields_and_feature_paths():
  import tensorflow_datasets as tfds
  from tensorflow_datasets.proto import tf_example_pb2
  features = tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(None, None, 3)),
      "captions": tfds.features.Sequence({"id": np.int64, "text": tfds.features.Text()}),
  })
  text, depth = sources._feature_path(features, "captions/text")  # pylint: disable=protected-access
  assert isinstance(text, tfds.features.Text) and depth == 1
  assert sources._feature_path(features, "image")[1] == 0  # pylint: disable=protected-access
  # coco_captions-style record: several captions under a flattened key.
  ex = tf_example_pb2.Example()
  ex.features.feature["image"].bytes_list.value.append(b"png bytes")
  ex.features.feature["captions/text"].bytes_list.value.extend([b"a cat", b"a dog"])
  ex.features.feature["captions/id"].int64_list.value.extend([1, 2])
  data = ex.SerializeToString()
  assert sources.example_fields(data, "image", "captions/text", True) == {
      "image": b"png bytes", "caption": [b"a cat", b"a dog"]}
  assert sources.example_fields(data, "image", "missing", False) == {
      "image": b"png bytes", "caption": None}
  with pytest.raises(Exception):
    sources.example_fields(b"\xff\xff\xff", "image", "caption", False)
