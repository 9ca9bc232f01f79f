"""Stage-2 token dataset: ArrayRecord + msgpack writer/reader and its pipeline."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from vlgen_jax.data import decode, pipeline, token_records
from vlgen_jax.data.token_records import TokenRecordSource, TokenRecordWriter
from vlgen_jax.errors import UserError
from vlgen_jax.text.tokenizer import TextTokenizer

GRID = (4, 4)
META = {"token_grid": GRID, "codebook_size": 512, "vq": {"checkpoint": "vq/step_100"}}


def _records(n, seed=0, codebook=512):
  rng = np.random.default_rng(seed)
  return [(rng.integers(0, codebook, GRID[0] * GRID[1]), f"caption {i} of seed {seed}")
          for i in range(n)]


def _write(directory, split, recs, num_shards=3, **kw):
  with TokenRecordWriter(str(directory), split, num_shards, META, **kw) as w:
    for tokens, caption in recs:
      w.write(tokens, caption)
  return w


def test_round_trip_and_info(tmp_path):
  recs = _records(10)
  w = _write(tmp_path, "train", recs)
  assert w.num_written == 10
  info = json.loads((tmp_path / "dataset_info.json").read_text())
  assert info["meta"]["token_grid"] == list(GRID) and info["meta"]["vq"] == META["vq"]
  assert info["splits"]["train"]["num_records"] == 10
  assert sorted(info["splits"]["train"]["shards"]) == [
      f"train-0000{i}-of-00003.array_record" for i in range(3)]
  assert sorted(info["splits"]["train"]["shards"].values()) == [3, 3, 4]
  src = TokenRecordSource(str(tmp_path), "train")
  assert len(src) == 10 and src.num_tokens == 16
  got = sorted(((t.tolist(), c) for t, c in src), key=lambda r: r[1])
  want = sorted(((t.tolist(), c) for t, c in recs), key=lambda r: r[1])
  assert got == want
  tokens, _ = next(iter(src))
  assert tokens.dtype == np.int32


def test_small_codebooks_are_stored_as_int16(tmp_path):
  tokens = np.arange(16) * 1000
  data = token_records.encode_token_record(tokens, "x", dtype=np.int16)
  wide = token_records.encode_token_record(tokens, "x", dtype=np.int32)
  assert len(wide) - len(data) == 16 * 2
  back, caption = token_records.decode_token_record(data)
  np.testing.assert_array_equal(back, tokens)
  assert caption == "x"


def test_multi_writer_split_and_rewrite(tmp_path):
  # Two processes of one encode job write one split.
  a, b = _records(5, seed=1), _records(4, seed=2)
  _write(tmp_path, "train", a, num_shards=2, process_index=0, process_count=2)
  _write(tmp_path, "train", b, num_shards=2, process_index=1, process_count=2)
  _write(tmp_path, "validation", _records(3, seed=3), num_shards=1)
  src = TokenRecordSource(str(tmp_path), "train")
  assert len(src) == 9
  assert {c for _, c in src} == {c for _, c in a + b}
  assert len(TokenRecordSource(str(tmp_path), "validation")) == 3
  # A later run with another sharding replaces the split instead of mixing.
  _write(tmp_path, "train", _records(2, seed=4), num_shards=1)
  assert {c for _, c in TokenRecordSource(str(tmp_path), "train")} == {
      c for _, c in _records(2, seed=4)}


def test_failed_writer_does_not_publish(tmp_path):
  with pytest.raises(RuntimeError):
    with TokenRecordWriter(str(tmp_path), "train", 1, META) as w:
      w.write(*_records(1)[0])
      raise RuntimeError("encoder crashed")
  assert not (tmp_path / "dataset_info.json").exists()


def test_writer_and_reader_errors(tmp_path):
  with TokenRecordWriter(str(tmp_path), "train", 1, META) as w:
    with pytest.raises(ValueError, match="expected 16 tokens"):
      w.write(np.zeros(15, np.int32), "short")
    with pytest.raises(ValueError, match=r"in \[0, 512\)"):
      w.write(np.full(16, 512), "out of range")
    w.write(*_records(1)[0])
  with pytest.raises(UserError, match="codebook_size=512"):
    TokenRecordWriter(str(tmp_path), "train", 1, {**META, "codebook_size": 1024})
  with pytest.raises(UserError, match="no split 'test'"):
    TokenRecordSource(str(tmp_path), "test")
  with pytest.raises(UserError, match="dataset_info.json missing"):
    TokenRecordSource(str(tmp_path / "nowhere"), "train")
  os.remove(tmp_path / "train-00000-of-00001.array_record")
  with pytest.raises(UserError, match="shard missing"):
    TokenRecordSource(str(tmp_path), "train")
  with pytest.raises(decode.BadRecord):
    token_records.decode_token_record(b"\xc1 not msgpack")
  with pytest.raises(decode.BadRecord):
    token_records.decode_token_record(b"\x93\x01\x02\x03")  # msgpack, wrong structure


def test_tokens_pipeline_batches_and_skips(tmp_path):
  recs = _records(22, seed=5)
  recs[3] = (recs[3][0], "   ")  # empty caption: skipped, counted
  _write(tmp_path, "train", recs, num_shards=2)
  tok = TextTokenizer.train([c for _, c in recs] * 3, 64)
  cfg = pipeline.default_data_config()
  cfg.source, cfg.data_dir, cfg.max_text_len, cfg.prefetch = "tokens", str(tmp_path), 12, 0
  it = pipeline.make_iterator(cfg, split="train", batch_size=4, seed=0, train=False,
                              process_index=0, process_count=1, tokenizer=tok)
  batches = list(it)
  assert len(batches) == 5  # 21 good records: 5 full batches, 1 dropped
  assert batches[0]["image_tokens"].shape == (4, 16) and batches[0]["image_tokens"].dtype == np.int32
  assert batches[0]["text_ids"].shape == (4, 12) and batches[0]["text_ids"].dtype == np.int32
  by_caption = {c: t for t, c in recs}
  for b in batches:
    for tokens, caption in zip(b["image_tokens"], tok.decode_batch(b["text_ids"])):
      np.testing.assert_array_equal(tokens, by_caption[caption])
  stats = it.stats()
  assert stats["records"] == 22 and stats[decode.EMPTY_CAPTION] == 1
  assert stats["dropped_remainder"] == 1 and stats["skipped"] == 1
  it.close()
