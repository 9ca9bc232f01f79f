"""Data faults mid-run: a tar shard with bad records, first read after step 3,
is handled like any bad data (each record skipped and counted by reason), the
counts survive a preemption, and the run's losses are exactly those of a run on
the same shards with the bad records removed.

The toy task reads the images through the real input pipeline
(`data.source=tar`: tar index, decode, counted skips, resumable state) as 3x3
pixel sequences; unshuffled, so both runs see the good records in one order.
"""
from __future__ import annotations

import io
import tarfile

import numpy as np
from PIL import Image

from fault_helpers import RUN, last_logged, logged, run_ok

BATCH = 16  # the toy config's global batch
# Shard 1 holds 16 good records with the bad ones among them (before good
# record i of the shard): garbage bytes, a truncated PNG, a key with only a
# caption (its image file is missing), an empty image file.
BAD = {2: ("garbage", b"this is not an image"), 5: ("truncated", None),
       9: ("no_image", None), 15: ("empty", b"")}
REASON = {"garbage": "undecodable_image", "truncated": "undecodable_image",
          "no_image": "missing_file", "empty": "undecodable_image"}
SHARD_SIZES = (48, 16, 32)  # good records per shard: 6 batches an epoch


def _png(rng) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, (3, 3, 3), dtype=np.uint8)).save(buf, "PNG")
  return buf.getvalue()


def _add(tar, name: str, data: bytes) -> None:
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def _write_shards(directory, with_bad: bool) -> list[str]:
  """The shards; returns the kinds of records of one epoch in reading order."""
  rng = np.random.default_rng(0)
  directory.mkdir(parents=True)
  kinds = []
  for s, size in enumerate(SHARD_SIZES):
    with tarfile.open(directory / f"{s:05d}.tar", "w") as tar:
      for i in range(size):
        if s == 1 and i in BAD:
          kind, data = BAD[i]
          if kind == "truncated":  # drawn either way: both dirs get the same good images
            data = _png(rng)[:30]
          if with_bad:
            key = f"{s}_{i}_bad"
            if kind != "no_image":
              _add(tar, f"{key}.png", data)
            _add(tar, f"{key}.txt", b"a bad record")
            kinds.append(kind)
        key = f"{s}_{i}"
        _add(tar, f"{key}.png", _png(rng))
        _add(tar, f"{key}.txt", b"pixels")
        kinds.append("good")
  return kinds


def _expected_counts(kinds: list[str], steps: int) -> dict[int, dict[str, int]]:
  """Per step, the skip counts the pipeline must report: records are read in
  order (repeating each epoch) until a batch has BATCH good ones."""
  out, counts, good, i = {}, {"undecodable_image": 0, "missing_file": 0, "records": 0}, 0, 0
  for step in range(1, steps + 1):
    while good < step * BATCH:
      kind = kinds[i % len(kinds)]
      counts["records"] += 1
      if kind == "good":
        good += 1
      else:
        counts[REASON[kind]] += 1
      i += 1
    out[step] = dict(counts, skipped=counts["undecodable_image"] + counts["missing_file"])
  return out


def test_bad_shard_mid_run_is_skipped_counted_and_invisible_in_the_loss(tmp_path, env):
  data = {"data.source": "tar", "data.shuffle": False}
  bad_dir, clean_dir = tmp_path / "bad_data", tmp_path / "clean_data"
  kinds = _write_shards(bad_dir, with_bad=True)
  assert _write_shards(clean_dir, with_bad=False) == [k for k in kinds if k == "good"]

  # Preempted after the bad records were read, then resumed to the end.
  bad = tmp_path / "bad"
  run_ok(bad, {**RUN, **data, "data.data_dir": str(bad_dir), "debug.sigterm_after_step": 5},
         env)
  out = run_ok(bad, {**RUN, **data, "data.data_dir": str(bad_dir)}, env)
  assert "resumed from step 5" in out
  clean = tmp_path / "clean"
  run_ok(clean, {**RUN, **data, "data.data_dir": str(clean_dir)}, env)

  # Same losses, bit for bit, at every step: the bad records only went missing.
  assert [s for s, _ in logged(bad)] == list(range(1, 31))
  assert last_logged(bad) == last_logged(clean)
  assert last_logged(bad, "train/grad_norm") == last_logged(clean, "train/grad_norm")

  expected = _expected_counts(kinds, RUN["total_steps"])
  assert expected[3]["skipped"] == 0 < expected[4]["skipped"]  # they appear in step 4
  assert expected[30]["skipped"] == 5 * len(BAD)  # 30 steps = 5 epochs
  for key in ("skipped", "undecodable_image", "missing_file", "records"):
    got = last_logged(bad, f"data/{key}")
    assert got == {s: expected[s][key] for s in range(1, 31)}, key
    assert set(last_logged(clean, f"data/{key}").values()) == (
        {0} if key != "records" else set(range(BATCH, 31 * BATCH, BATCH)))
