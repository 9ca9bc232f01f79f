"""`vlgen sample` (vlgen_jax/sample/cli.py): images are written batch by
batch into `<outdir>.partial` under a lock and the folder appears only when
complete; an existing folder survives an interrupted --overwrite; a rerun
after SIGTERM resumes to the same bytes as an uninterrupted run; memory holds
one batch (prompts streamed, batch capped); a damaged export falls back to
the newest usable checkpoint."""
from __future__ import annotations

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np

from trainer_helpers import REPO_ROOT
from vlgen_jax import cli, locks

PROMPTS = ("a large red circle in the center", "a small blue square at the top left")
PER_PROMPT = 6
BATCH = 1  # 12 images: 12 batches
# Seed 36 stops after 5 images, then 2, 2, 1, 1 more (resumed runs), ending
# on each prompt's images and in the middle of both. Checked below.
SEED = 36
TRIALS = 5


def _files(root) -> dict[str, bytes]:
  root = pathlib.Path(root)
  return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _args(demo, outdir, *extra):
  return ["sample", "--workdir", str(demo), "--outdir", str(outdir),
          *[a for p in PROMPTS for a in ("--prompt", p)], "--num-per-prompt", str(PER_PROMPT),
          "--batch-size", str(BATCH), *extra]


def _sample(args, capsys):
  """`vlgen sample` in this process (the real SIGTERM path: the sampler signals
  itself, the handler stops it between batches): (exit code, stderr)."""
  capsys.readouterr()
  rc = cli.main(args)
  return rc, capsys.readouterr().err


def test_interrupted_samples_keep_the_old_folder_and_resume_to_the_same_bytes(
    tmp_path, capsys, demo_tiny_dir):
  demo = demo_tiny_dir
  out, ref = tmp_path / "samples", tmp_path / "reference"
  assert cli.main(_args(demo, out, "--seed", "1")) == 0  # the previous, different folder
  previous = _files(out)
  assert cli.main(_args(demo, ref)) == 0
  reference = _files(ref)
  assert len([n for n in reference if n.endswith(".png")]) == 13  # 12 + grid
  assert previous != reference

  rng = np.random.default_rng(SEED)
  done, stops = 0, []
  for _ in range(TRIALS):
    left = len(PROMPTS) * PER_PROMPT - done
    stop = int(rng.integers(1, left))  # SIGTERM after this many batches of this run
    stops.append((done, stop))
    rc, err = _sample(_args(demo, out, "--overwrite", f"--debug-sigterm-after-batches={stop}"),
                      capsys)
    assert rc == 143, err[-3000:]
    done += stop * BATCH
    assert (f"stopped by SIGTERM: {done} of 12 images in {out}.partial; rerun the same command "
            "to resume") in err
    assert "Traceback" not in err
    assert _files(out) == previous  # the old folder is intact
  assert stops[0][0] == 0 and all(d > 0 for d, _ in stops[1:]), stops

  rc, err = _sample(_args(demo, out, "--overwrite"), capsys)
  assert rc == 0, err[-3000:]
  assert f"resuming {out}.partial: {done} of 12 images done" in err
  assert _files(out) == reference
  assert sorted(os.listdir(tmp_path)) == ["reference", "samples"]


def test_existing_or_busy_outdir_is_one_line(tmp_path, capsys, demo_tiny_dir):
  existing = tmp_path / "existing"
  existing.mkdir()
  (existing / "captions.tsv").write_text("00000.png\tx\n")
  assert cli.main(_args(demo_tiny_dir, existing)) == 2
  assert capsys.readouterr().err == (
      f"error: --outdir {existing} already exists; add --overwrite to replace it (the old one is "
      "kept until the new one is complete) or choose another directory\n")
  busy = tmp_path / "busy"
  with locks.output_lock(busy):
    assert cli.main(_args(demo_tiny_dir, busy)) == 2
  err = capsys.readouterr().err
  assert err.startswith(f"error: output {busy} is in use by pid {os.getpid()} on "), err
  assert sorted(os.listdir(tmp_path)) == ["existing"]


def test_a_newline_in_a_prompt_keeps_captions_tsv_readable(tmp_path, capsys, demo_tiny_dir):
  out = tmp_path / "samples"
  assert cli.main(["sample", "--workdir", str(demo_tiny_dir), "--outdir", str(out), "--prompt",
                   "a red\ncircle\tat the top", "--prompt", "a blue square"]) == 0
  assert (out / "captions.tsv").read_text() == (
      "00000.png\ta red circle at the top\n00001.png\ta blue square\n")
  capsys.readouterr()
  assert cli.main(["eval", "--images", str(out)]) == 0, capsys.readouterr().err


def _peak_rss_mb(pid: int) -> float:
  with open(f"/proc/{pid}/status") as f:
    return next(int(l.split()[1]) for l in f if l.startswith("VmHWM")) / 1024


def test_huge_batch_and_prompt_count_run_in_bounded_memory(tmp_path, env, demo_tiny_dir):
  """10^8 images of one prompt in batches of 10^8: the batch is capped and
  prompts are streamed, so the run starts writing images at once in a few
  hundred MB; SIGTERM then stops it cleanly."""
  out = tmp_path / "samples"
  proc = subprocess.Popen(
      [sys.executable, "-m", "vlgen_jax.cli", "sample", "--workdir", str(demo_tiny_dir),
       "--outdir", str(out), "--prompt", "a red circle", "--num-per-prompt", "100000000",
       "--batch-size", "100000000"],
      env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.monotonic() + 300
    partial = tmp_path / "samples.partial"
    while not (partial / "00001.png").exists():
      assert proc.poll() is None, proc.communicate()[1][-3000:]
      assert time.monotonic() < deadline, "no image written"
      time.sleep(0.2)
    rss = _peak_rss_mb(proc.pid)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  assert proc.returncode == 143, err[-3000:]
  assert "note: --batch-size 100000000 capped at " in err
  assert rss < 3000, rss
  assert "of 100000000 images in" in err


def test_a_damaged_export_falls_back_to_the_newest_usable_checkpoint(tmp_path, capsys,
                                                                     demo_tiny_dir):
  run = tmp_path / "t2i"
  shutil.copytree(demo_tiny_dir / "t2i", run)
  assert cli.main(["sample", "--workdir", str(run), "--outdir", str(tmp_path / "intact"),
                   "--prompt", PROMPTS[0]]) == 0
  # Every array file of the export truncated; its config.json is garbage bytes.
  for path in (run / "export" / "params").rglob("*"):
    if path.is_file() and path.parent.name == "d":
      path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
  (run / "export" / "config.json").write_bytes(b"\xff\xfe garbage")
  capsys.readouterr()
  assert cli.main(["sample", "--workdir", str(run), "--outdir", str(tmp_path / "fallback"),
                   "--prompt", PROMPTS[0]]) == 0
  err = capsys.readouterr().err
  assert f"warning: {run}/export/config.json is unusable" in err
  assert f"warning: export (step 4) in {run} is unusable" in err
  assert "Traceback" not in err
  # The export and checkpoint 4 hold the same params: the same image.
  assert (tmp_path / "fallback" / "00000.png").read_bytes() == (
      tmp_path / "intact" / "00000.png").read_bytes()
