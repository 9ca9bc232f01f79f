"""Input pipeline on shapes: resumable state, global batches across processes,
eval passes, counts that follow the iterator position."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from vlgen_jax.data import decode, pipeline

from vlgen_jax.shapes import scenes
from vlgen_jax.errors import UserError
from vlgen_jax.text.tokenizer import TextTokenizer

SHAPES_NAME = scenes.dataset_name(64, 512, 64, 64)  # the shapes_data_dir fixture
GLOBAL_BATCH = 8


@pytest.fixture(scope="module")
def tokenizer():
  return TextTokenizer.train([scenes.sample_scene("train", i).caption for i in range(600)], 256)


@pytest.fixture(scope="module")
def shapes_config(shapes_data_dir):
  cfg = pipeline.default_data_config()
  cfg.source, cfg.name, cfg.data_dir = "tfds", SHAPES_NAME, str(shapes_data_dir)
  cfg.max_text_len = 24
  cfg.read_threads, cfg.read_buffer, cfg.prefetch = 2, 16, 2
  return cfg


def _iterator(cfg, tokenizer, *, split="train", process_index=0, process_count=1, seed=7,
              train=True, global_batch=GLOBAL_BATCH, source=None):
  return pipeline.make_iterator(cfg, split=split, batch_size=global_batch // process_count,
                                seed=seed, train=train, process_index=process_index,
                                process_count=process_count, tokenizer=tokenizer, source=source)


def _take(it, n):
  return [next(it) for _ in range(n)]


def _global(batches_per_process):
  """Per-process batch lists -> global batches (process order)."""
  return [{k: np.concatenate([b[k] for b in step]) for k in step[0]}
          for step in zip(*batches_per_process)]


def _assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def _restore_check(cfg, tokenizer, process_count, k, n, split="train", source=None):
  """Saves each process's state after k batches, restores it into fresh
  iterators, and checks the next n batches and counts match uninterrupted ones."""
  originals = [_iterator(cfg, tokenizer, split=split, process_index=p,
                         process_count=process_count, source=source)
               for p in range(process_count)]
  for it in originals:
    _take(it, k)
  # States go through JSON, as a checkpoint stores them.
  states = [json.loads(json.dumps(it.get_state())) for it in originals]
  stats_at_k = [it.stats() for it in originals]
  uninterrupted = [_take(it, n) for it in originals]
  restored = []
  for p, state in enumerate(states):
    it = _iterator(cfg, tokenizer, split=split, process_index=p, process_count=process_count,
                   source=source)
    it.set_state(state)
    assert it.stats() == stats_at_k[p]
    restored.append(_take(it, n))
    assert it.stats() == originals[p].stats()
    it.close()
  for it in originals:
    it.close()
  for a, b in zip(uninterrupted, restored):
    _assert_same(a, b)
  return uninterrupted


@pytest.mark.parametrize("process_count", [1, 2])
def test_restored_iterator_continues_exactly(shapes_config, tokenizer, process_count):
  # 40 records = 5 global batches an epoch: k + n crosses two epoch boundaries.
  batches = _restore_check(shapes_config, tokenizer, process_count, k=3, n=9,
                           split="train[:40]")
  assert batches[0][0]["image"].shape == (GLOBAL_BATCH // process_count, 64, 64, 3)
  assert batches[0][0]["text_ids"].shape == (GLOBAL_BATCH // process_count, 24)


def test_processes_split_every_global_batch_exactly(shapes_config, tokenizer):
  steps = 12  # 2.4 epochs of train[:40]
  single = _iterator(shapes_config, tokenizer, split="train[:40]")
  want = _take(single, steps)
  per_process = []
  for p in range(2):
    it = _iterator(shapes_config, tokenizer, split="train[:40]", process_index=p, process_count=2)
    per_process.append(_take(it, steps))
    it.close()
  _assert_same(_global(per_process), want)
  # Every epoch is a permutation of the 40 records, a different one each epoch.
  captions = [c for b in want for c in tokenizer.decode_batch(b["text_ids"])]
  source = pipeline.make_source(shapes_config, "train[:40]")
  all_captions = sorted(decode.decode_caption(source[i]["caption"]) for i in range(40))
  epochs = [captions[i:i + 40] for i in (0, 40)]
  assert sorted(epochs[0]) == all_captions and sorted(epochs[1]) == all_captions
  assert epochs[0] != epochs[1]
  assert single.stats()["records"] == steps * GLOBAL_BATCH and single.stats()["skipped"] == 0
  single.close()


def test_batches_match_the_records(shapes_config, tokenizer, shapes_data_dir):
  it = _iterator(shapes_config, tokenizer, split="validation", train=False)
  batch = next(it)
  it.close()
  # Eval order is storage order; shapes record i is scene i of the split.
  for i in range(GLOBAL_BATCH):
    scene = scenes.sample_scene("validation", i)
    np.testing.assert_array_equal(decode.from_model_range(batch["image"][i]),
                                  scenes.render(scene, 64))
    assert tokenizer.decode(batch["text_ids"][i]) == scene.caption
  assert batch["image"].dtype == np.float32
  assert batch["image"].min() >= -1.0 and batch["image"].max() <= 1.0


def test_seed_controls_order(shapes_config, tokenizer):
  def first(seed):
    it = _iterator(shapes_config, tokenizer, seed=seed)
    out = next(it)["text_ids"]
    it.close()
    return out
  np.testing.assert_array_equal(first(1), first(1))
  assert not np.array_equal(first(1), first(2))


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_pass_is_finite_and_covers_the_split(shapes_config, tokenizer, process_count):
  # validation has 64 records; global batch 24 -> 2 full batches + 16 left:
  # with 2 processes (12 each) process 0 gets a full 12, process 1 gets 4 (dropped).
  per_process, stats = [], []
  for p in range(process_count):
    it = _iterator(shapes_config, tokenizer, split="validation", train=False, process_index=p,
                   process_count=process_count, global_batch=24)
    per_process.append(list(it))
    stats.append(it.stats())
    it.close()
  assert sum(s["records"] for s in stats) == 64
  got = [c for batches in per_process for b in batches for c in tokenizer.decode_batch(b["text_ids"])]
  want = [scenes.sample_scene("validation", i).caption for i in range(64)]
  if process_count == 1:
    assert [len(b) for b in per_process] == [2] and got == want[:48]
    assert stats[0]["dropped_remainder"] == 16
  else:
    assert [len(b) for b in per_process] == [3, 2]
    assert sorted(got) == sorted(want[:60])
    assert [s["dropped_remainder"] for s in stats] == [0, 4]


def test_resize_to_other_resolution(shapes_config, tokenizer):
  cfg = shapes_config.copy_and_resolve_references()
  cfg.resolution = 32
  it = _iterator(cfg, tokenizer, train=False, split="validation")
  batch = next(it)
  it.close()
  assert batch["image"].shape == (GLOBAL_BATCH, 32, 32, 3)


def test_images_only_without_tokenizer(shapes_config):
  it = _iterator(shapes_config, None, train=False, split="validation")
  assert set(next(it)) == {"image"}
  it.close()


def test_state_from_another_pipeline_is_rejected(shapes_config, tokenizer):
  a = _iterator(shapes_config, tokenizer, process_count=2)
  next(a)
  state = a.get_state()
  a.close()
  b = _iterator(shapes_config, tokenizer, process_count=1)
  with pytest.raises(UserError, match="process_count"):
    b.set_state(state)
  b.close()


def test_config_errors(shapes_config, tokenizer, tmp_path):
  cfg = shapes_config.copy_and_resolve_references()
  cfg.caption_key = "label"
  with pytest.raises(UserError, match="no feature 'label'"):
    pipeline.make_source(cfg, "train")
  with pytest.raises(UserError, match="no split"):
    pipeline.make_source(shapes_config, "test")
  cfg = shapes_config.copy_and_resolve_references()
  cfg.name = "shapes/res48_train10_val10_heldout10"
  with pytest.raises(UserError, match="resolution"):
    pipeline.make_source(cfg, "train")
  with pytest.raises(UserError, match="batch size"):
    _iterator(shapes_config, tokenizer, global_batch=0)


# ---- bad records with shuffling, processes and restore ----------------------

class ListSource:
  """An in-memory source of raw records (what sources.* return)."""

  def __init__(self, records):
    self._records = records

  def __len__(self):
    return len(self._records)

  def __getitem__(self, i):
    return self._records[i]


def _png(value: int) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(buf, "PNG")
  return buf.getvalue()


def _noisy_records(n=60):
  recs = []
  for i in range(n):
    rec = {"key": str(i), "image": _png(i), "caption": f"record {i}".encode()}
    if i % 7 == 3:
      rec["image"] = b"not an image"
    if i % 11 == 5:
      rec["caption"] = b"\xff\xfe"
    recs.append(rec)
  return recs


@pytest.fixture(scope="module")
def noisy():
  recs = _noisy_records()
  tok = TextTokenizer.train([f"record {i}" for i in range(60)], 96)
  cfg = pipeline.default_data_config()
  cfg.source, cfg.resolution, cfg.max_text_len = "folder", 8, 8
  cfg.read_threads, cfg.read_buffer, cfg.prefetch = 2, 8, 2
  return cfg, tok, ListSource(recs)


@pytest.mark.parametrize("process_count", [1, 2])
def test_restore_with_bad_records(noisy, process_count):
  cfg, tok, source = noisy
  _restore_check(cfg, tok, process_count, k=4, n=10, source=source)


def _expected_noisy(n):
  # The caption is checked before the image is decoded (the cheaper check).
  bad_caption = {i for i in range(n) if i % 11 == 5}
  bad_image = {i for i in range(n) if i % 7 == 3} - bad_caption
  good = set(range(n)) - bad_image - bad_caption
  return good, len(bad_image), len(bad_caption)


def _record_id(caption: str) -> int:
  return int(caption.split(" ")[1])


@pytest.mark.parametrize("process_count", [1, 2])
def test_every_good_record_once_per_epoch_with_skips(noisy, process_count):
  cfg, tok, source = noisy
  n = len(source)
  good, bad_image, bad_caption = _expected_noisy(n)
  share = n // process_count
  seen, totals = [], {}
  for p in range(process_count):
    # Batch 1: a batch ends exactly at its good record, so the records counted
    # after it tell whether it still belongs to this process's first epoch.
    it = _iterator(cfg, tok, process_index=p, process_count=process_count, source=source,
                   global_batch=process_count)
    while True:
      caption = tok.decode_batch(next(it)["text_ids"])[0]
      stats = it.stats()
      if stats["records"] > share:
        break
      seen.append(_record_id(caption))
      final = stats
    it.close()
    for k, v in final.items():
      totals[k] = totals.get(k, 0) + v
  assert sorted(seen) == sorted(good)
  # Skips are counted where they happen; every epoch-1 skip before the last
  # good record of each process is in the totals, none twice.
  assert totals[decode.UNDECODABLE_IMAGE] <= bad_image
  assert totals[decode.BAD_CAPTION] <= bad_caption
  assert totals["records"] == len(good) + totals["skipped"]


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_counts_every_skip_exactly(noisy, process_count):
  cfg, tok, source = noisy
  good, bad_image, bad_caption = _expected_noisy(len(source))
  seen, totals = [], {}
  for p in range(process_count):
    it = _iterator(cfg, tok, process_index=p, process_count=process_count, source=source,
                   global_batch=process_count, train=False)
    seen.extend(_record_id(c) for b in it for c in tok.decode_batch(b["text_ids"]))
    for k, v in it.stats().items():
      totals[k] = totals.get(k, 0) + v
    it.close()
  assert sorted(seen) == sorted(good)
  assert totals[decode.UNDECODABLE_IMAGE] == bad_image
  assert totals[decode.BAD_CAPTION] == bad_caption
  assert totals["records"] == len(source) and totals["dropped_remainder"] == 0


def test_caption_choice_is_seeded_and_process_independent():
  # Every record has two captions; no skips, so global batches must agree
  # exactly between 1 and 2 processes, caption choices included.
  recs = [{"key": str(i), "image": _png(i),
           "caption": np.array([f"record {i} first".encode(), f"record {i} second".encode()])}
          for i in range(12)]
  tok = TextTokenizer.train([f"record {i} first second" for i in range(12)], 64)
  cfg = pipeline.default_data_config()
  cfg.source, cfg.resolution, cfg.max_text_len, cfg.prefetch = "folder", 8, 8, 1
  steps = 9  # 3 epochs
  single = _iterator(cfg, tok, source=ListSource(recs), global_batch=4)
  want = _take(single, steps)
  single.close()
  pp = []
  for p in range(2):
    it = _iterator(cfg, tok, source=ListSource(recs), global_batch=4, process_index=p,
                   process_count=2)
    pp.append(_take(it, steps))
    it.close()
  _assert_same(_global(pp), want)
  captions = [c for b in want for c in tok.decode_batch(b["text_ids"])]
  by_record = {}
  for c in captions:
    by_record.setdefault(_record_id(c), set()).add(c.split(" ")[-1])
  # Over 3 epochs, some record got each of its captions.
  assert any(v == {"first", "second"} for v in by_record.values())
  # Eval always takes the first caption.
  it = _iterator(cfg, tok, source=ListSource(recs), global_batch=4, train=False)
  assert all(c.endswith("first") for b in it for c in tok.decode_batch(b["text_ids"]))
  it.close()


def test_all_bad_data_is_a_user_error():
  recs = [{"key": str(i), "image": b"junk", "caption": b"x"} for i in range(10)]
  cfg = pipeline.default_data_config()
  cfg.source, cfg.prefetch = "folder", 0
  it = pipeline.make_iterator(cfg, split="train", batch_size=2, seed=0, train=True,
                              process_index=0, process_count=1, source=ListSource(recs))
  with pytest.raises(UserError, match="no usable record"):
    next(it)
  it.close()


def test_tfds_fast_path_matches_tfds_decoding(shapes_config, shapes_data_dir):
  import tensorflow_datasets as tfds
  from vlgen_jax.shapes import tfds_builder
  source = pipeline.make_source(shapes_config, "validation")
  assert source._raw  # pylint: disable=protected-access
  builder = tfds_builder.prepare_shapes(shapes_data_dir, 64, 512, 64, 64, progress=False)
  reference = builder.as_data_source("validation",
                                     decoders={"image": tfds.decode.SkipDecoding()})
  for i in (0, 17, 63):
    assert source[i]["image"] == reference[i]["image"]
    assert source[i]["caption"] == reference[i]["caption"]


def test_unreadable_record_is_counted(tokenizer):
  recs = [{"key": "0", "image": _png(1), "caption": b"record 0"},
          {"key": "1", "image": None, "caption": None, "error": decode.BAD_RECORD},
          {"key": "2", "image": _png(2), "caption": b"record 2"}]
  cfg = pipeline.default_data_config()
  cfg.source, cfg.resolution, cfg.prefetch = "folder", 8, 0
  it = pipeline.make_iterator(cfg, split="train", batch_size=1, seed=0, train=False,
                              process_index=0, process_count=1, tokenizer=tokenizer,
                              source=ListSource(recs))
  assert len(list(it)) == 2
  assert it.stats()[decode.BAD_RECORD] == 1 and it.stats()["skipped"] == 1
  it.close()


def test_orbax_checkpoint_round_trip(noisy, tmp_path):
  # The trainer saves iterators with Grain's Orbax handler (one JSON per process).
  import grain
  import orbax.checkpoint as ocp
  cfg, tok, source = noisy
  it = _iterator(cfg, tok, source=source)
  _take(it, 5)
  manager = ocp.CheckpointManager(str(tmp_path), item_names=("data",))
  manager.save(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)), force=True)
  manager.wait_until_finished()
  want = _take(it, 4)
  want_stats = it.stats()
  restored = _iterator(cfg, tok, source=source)
  manager.restore(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(restored)))
  _assert_same(_take(restored, 4), want)
  assert restored.stats() == want_stats and want_stats["skipped"] > 0
  manager.close()
  it.close()
  restored.close()


def test_full_pass_with_captions(shapes_config):
  # What `vlgen encode` needs: every record, with its caption string.
  sizes, captions = [], []
  for p in range(2):
    it = pipeline.make_iterator(shapes_config, split="validation", batch_size=12, seed=0,
                                train=False, process_index=p, process_count=2,
                                with_captions=True, drop_remainder=False)
    for batch in it:
      sizes.append(len(batch["image"]))
      assert batch["caption"].dtype == object and "text_ids" not in batch
      captions.extend(batch["caption"].tolist())
    assert it.stats()["dropped_remainder"] == 0
    it.close()
  # 64 records in global batches of 24: 2 full, then 12 for process 0 and 4 for process 1.
  assert sizes == [12, 12, 12, 12, 12, 4]
  assert sorted(captions) == sorted(scenes.sample_scene("validation", i).caption for i in range(64))
  with pytest.raises(ValueError, match="finite"):
    pipeline.make_iterator(shapes_config, split="train", batch_size=4, seed=0, train=True,
                           process_index=0, process_count=1, drop_remainder=False)


def test_shapes_name_matches_the_builder_config():
  from vlgen_jax.shapes import tfds_builder
  assert scenes.dataset_name(32, 100, 10, 5) == "shapes/" + tfds_builder.config_name(
      32, 100, 10, 5)
  assert scenes.dataset_name() == "shapes/" + tfds_builder.config_name(
      64, **{f"{k}_size": v for k, v in scenes.DEFAULT_SPLIT_SIZES.items()})


def test_no_dataset_is_a_default_and_tfds_needs_a_name():
  """Generic data configs name no dataset (shapes is a plug-in, not a default)."""
  cfg = pipeline.default_data_config()
  assert cfg.name == ""
  with pytest.raises(UserError, match="data.source=tfds needs data.name"):
    pipeline.make_source(cfg, "train")
  cfg.name = "shapes"
  with pytest.raises(UserError, match="built on first use and needs data.data_dir"):
    pipeline.make_source(cfg, "train")
