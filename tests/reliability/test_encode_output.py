"""`vlgen encode` (vlgen_jax/vq/encode.py): options are checked before any
work, the output is written to `<output>.partial` under a lock and appears
only when complete, an existing output survives an interrupted --overwrite,
and a rerun after SIGTERM resumes to the same bytes as an uninterrupted run."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from trainer_helpers import REPO_ROOT, subprocess_env
from vlgen_jax import cli, locks

BATCH = 4  # demo_tiny: 64 train images (16 batches), 16 validation (4)
SPLIT_BATCHES = {"train": 16, "validation": 4}
# Seed 12 stops after batches 12, 5 (in train), 19 (in validation, train
# done), then 3 and 1 of resumed runs (in validation). Checked below.
SEED = 12
TRIALS = 5


def _files(root) -> dict[str, bytes]:
  root = pathlib.Path(root)
  return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _encode_args(demo, output, *extra):
  return ["encode", "--workdir", str(demo / "vq"), "--output", str(output), "--splits",
          "train,validation", "--batch-size", str(BATCH), "--threads", "1", *extra]


def _encode(demo, output, env, *extra):
  return subprocess.run([sys.executable, "-m", "vlgen_jax.cli", *_encode_args(demo, output, *extra)],
                        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)


def test_interrupted_encodes_keep_the_old_output_and_resume_to_the_same_bytes(
    tmp_path, compile_cache_dir, demo_tiny_dir):
  demo = demo_tiny_dir
  # One device: batches of 4 (the batch is rounded up to the device count).
  env = subprocess_env(compile_cache_dir, devices=1)
  out, ref = tmp_path / "tokens", tmp_path / "reference"
  assert _encode(demo, out, env, "--num-shards", "1").returncode == 0
  previous = _files(out)
  done = _encode(demo, ref, env, "--num-shards", "2")
  assert done.returncode == 0, done.stderr[-3000:]
  reference = _files(ref)
  assert previous != reference  # so "intact" and "resumed" below are told apart

  rng = np.random.default_rng(SEED)
  finished: list[str] = []
  stops = []
  for trial in range(TRIALS):
    left = sum(n for s, n in SPLIT_BATCHES.items() if s not in finished)
    stop = int(rng.integers(1, left))  # SIGTERM after this many batches of this run
    stops.append((finished[:], stop))
    proc = _encode(demo, out, env, "--num-shards", "2", "--overwrite",
                   f"--debug-sigterm-after-batches={stop}")
    assert proc.returncode == 143, proc.stderr[-3000:]
    assert "stopped by SIGTERM during split" in proc.stdout and "Traceback" not in proc.stderr
    assert _files(out) == previous  # the old output is intact
    assert (tmp_path / "tokens.partial").is_dir()
    if finished:
      assert f"resuming {out}.partial: splits done: train" in proc.stdout
    if "train" not in finished and stop >= SPLIT_BATCHES["train"]:
      finished.append("train")
  # The draws cover a stop in each split, and a resumed run stopped again.
  assert any(not f and s < 16 for f, s in stops) and any(f for f, _ in stops), stops

  proc = _encode(demo, out, env, "--num-shards", "2", "--overwrite")
  assert proc.returncode == 0, proc.stderr[-3000:]
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
