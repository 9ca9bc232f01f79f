"""`vlgen encode` (vlgen_jax/vq/encode.py): options are checked before any
work, the output is written to `<output>.partial` under a lock and appears
only when complete, an existing output survives an interrupted --overwrite,
and a rerun after SIGTERM resumes to the same bytes as an uninterrupted run."""
from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest

from vlgen_jax import cli, locks

# In this process (8 forced devices; the batch is a multiple of the device
# count): demo_tiny's 64 train images are 8 batches, its 16 validation ones 2.
BATCH = 8
SPLIT_BATCHES = {"train": 8, "validation": 2}
# Seed 12 stops after batches 6, 3 (in train), 9 (in validation, train
# done), then 1 and 1 of resumed runs (in validation). Checked below.
SEED = 12
TRIALS = 5


def _files(root) -> dict[str, bytes]:
  root = pathlib.Path(root)
  return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _encode_args(demo, output, *extra):
  return ["encode", "--workdir", str(demo / "vq"), "--output", str(output), "--splits",
          "train,validation", "--batch-size", str(BATCH), "--threads", "1", *extra]


def _encode(demo, output, capsys, *extra):
  """`vlgen encode` in this process (the real SIGTERM path: encode signals
  itself, the handler stops it between batches): (exit code, stdout, stderr)."""
  capsys.readouterr()
  rc = cli.main(_encode_args(demo, output, *extra))
  captured = capsys.readouterr()
  return rc, captured.out, captured.err


def test_interrupted_encodes_keep_the_old_output_and_resume_to_the_same_bytes(
    tmp_path, capsys, demo_tiny_dir):
  demo = demo_tiny_dir
  out, ref = tmp_path / "tokens", tmp_path / "reference"
  assert _encode(demo, out, capsys, "--num-shards", "1")[0] == 0
  previous = _files(out)
  rc, _, err = _encode(demo, ref, capsys, "--num-shards", "2")
  assert rc == 0, err[-3000:]
  reference = _files(ref)
  assert previous != reference  # so "intact" and "resumed" below are told apart

  rng = np.random.default_rng(SEED)
  finished: list[str] = []
  stops = []
  for trial in range(TRIALS):
    left = sum(n for s, n in SPLIT_BATCHES.items() if s not in finished)
    stop = int(rng.integers(1, left))  # SIGTERM after this many batches of this run
    stops.append((finished[:], stop))
    rc, stdout, err = _encode(demo, out, capsys, "--num-shards", "2", "--overwrite",
                              f"--debug-sigterm-after-batches={stop}")
    assert rc == 143, err[-3000:]
    assert "stopped by SIGTERM during split" in stdout and "Traceback" not in err
    assert _files(out) == previous  # the old output is intact
    assert (tmp_path / "tokens.partial").is_dir()
    if finished:
      assert f"resuming {out}.partial: splits done: train" in stdout
    if "train" not in finished and stop >= SPLIT_BATCHES["train"]:
      finished.append("train")
  # The draws cover a stop in each split, and a resumed run stopped again.
  assert any(not f and s < SPLIT_BATCHES["train"] for f, s in stops), stops
  assert any(f for f, _ in stops), stops

  rc, _, err = _encode(demo, out, capsys, "--num-shards", "2", "--overwrite")
  assert rc == 0, err[-3000:]
  assert _files(out) == reference
  assert sorted(os.listdir(tmp_path)) == ["reference", "tokens"]  # no partial, lock or old copy


@pytest.mark.parametrize("extra, message", [
    (["--splits", "train,bogus"], "split"),
    (["--num-shards", "100000"], "--num-shards 100000 is more than the 64 records per process "
                                 "of split train; use at most 64"),
])
def test_encode_options_fail_before_any_work(tmp_path, capsys, demo_tiny_dir, extra, message):
  out = tmp_path / "tokens"
  rc = cli.main([*_encode_args(demo_tiny_dir, out), *extra])
  err = capsys.readouterr().err.strip()
  assert rc == 2 and err.startswith("error: ") and "\n" not in err and message in err, err
  assert os.listdir(tmp_path) == []


def test_encode_output_mistakes_and_a_busy_output_are_one_line(tmp_path, capsys, demo_tiny_dir):
  a_file = tmp_path / "file"
  a_file.write_text("x")
  assert cli.main(_encode_args(demo_tiny_dir, a_file)) == 2
  assert capsys.readouterr().err == f"error: --output {a_file} is a file, not a directory\n"

  existing = tmp_path / "existing"
  existing.mkdir()
  (existing / "dataset_info.json").write_text("{}")
  assert cli.main(_encode_args(demo_tiny_dir, existing)) == 2
  assert capsys.readouterr().err == (
      f"error: --output {existing} already exists; add --overwrite to replace it (the old one is "
      "kept until the new one is complete) or choose another directory\n")

  busy = tmp_path / "busy"
  with locks.output_lock(busy):
    assert cli.main(_encode_args(demo_tiny_dir, busy, "--splits", "validation")) == 2
  err = capsys.readouterr().err
  assert err.startswith(f"error: output {busy} is in use by pid {os.getpid()} on "), err
  assert not busy.exists()
