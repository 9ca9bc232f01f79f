"""Input data that used to be misread or leave litter: a tar shard with a
repeated key, a captions.tsv with a byte order mark and CRLF lines, a resume
after the data source changed, `text-tokenizer --output DIR`."""
from __future__ import annotations

import io
import shutil
import signal
import subprocess
import sys
import tarfile
import time

from PIL import Image

from fault_helpers import RUN, error_lines, run, wait_for
from trainer_helpers import REPO_ROOT
from vlgen_jax import cli
from vlgen_jax.data import sources
from vlgen_jax.data.decode import BAD_RECORD


def _add(tar, name: str, data: bytes) -> None:
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def test_a_repeated_tar_key_is_never_mispaired_and_its_records_are_bad_records(tmp_path):
  with tarfile.open(tmp_path / "00000.tar", "w") as tar:
    for name, data in [("a.png", b"image A"), ("a.txt", b"first"), ("b.png", b"image B"),
                       ("b.txt", b"caption B"), ("a.png", b"image C"), ("a.txt", b"second"),
                       ("c.png", b"image D"), ("c.txt", b"caption D")]:
      _add(tar, name, data)
  source = sources.TarShardSource(str(tmp_path))
  records = [source[i] for i in range(len(source))]
  assert [r["key"] for r in records] == ["a", "b", "a", "c"]  # both records of `a` counted
  for r in records:
    if r["key"] == "a":
      assert r["error"] == BAD_RECORD and r["image"] is None and r["caption"] is None
      assert "occurs more than once" in r["detail"]
    else:
      assert "error" not in r
  assert [(r["image"], r["caption"]) for r in records if r["key"] != "a"] == [
      (b"image B", b"caption B"), (b"image D", b"caption D")]


def test_captions_tsv_with_a_bom_and_crlf_lines(tmp_path):
  (tmp_path / "captions.tsv").write_bytes(
      b"\xef\xbb\xbffilename\tcaption\r\nimg0.png\ta red circle\r\nimg1.png\ta blue square\r\n")
  for i in range(2):
    (tmp_path / f"img{i}.png").write_bytes(b"png %d" % i)
  source = sources.FolderSource(str(tmp_path))
  assert len(source) == 2  # the header is no record
  assert [(source[i]["key"], source[i]["image"], source[i]["caption"]) for i in range(2)] == [
      ("img0.png", b"png 0", b"a red circle"), ("img1.png", b"png 1", b"a blue square")]


def test_resume_after_the_data_source_changed_is_one_line(tmp_path, env, reference):
  workdir = tmp_path / "run"
  shutil.copytree(reference, workdir)
  images = tmp_path / "images"
  images.mkdir()
  (images / "captions.tsv").write_text("x.png\tpixels\n")
  Image.new("RGB", (3, 3), (10, 200, 30)).save(images / "x.png")
  rc, out = run(workdir, {**RUN, "total_steps": 40, "data.source": "folder",
                          "data.data_dir": str(images)}, env)
  assert rc == 2, out[-3000:]
  assert "Traceback" not in out
  assert error_lines(out) == [
      "error: the checkpoint's data iterator state was not saved by this input pipeline (was "
      "data.source or the data config changed?); resume with the run's own config (its "
      "config.json) or start a new --workdir"]


def test_text_tokenizer_output_directory_is_one_line_and_leaves_nothing(tmp_path, capsys):
  text = tmp_path / "captions.txt"
  text.write_text("\n".join(f"a shape number {i}" for i in range(50)))
  out = tmp_path / "out"
  out.mkdir()
  rc = cli.main(["text-tokenizer", "--text-file", str(text), "--vocab-size", "32",
                 "--output", str(out)])
  assert rc == 2
  assert capsys.readouterr().err == (f"error: --output '{out}' must be the path of a .model file, "
                                     "not a directory\n")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["captions.txt", "out"]
  assert list(out.iterdir()) == []


def test_sigterm_during_data_shapes_leaves_no_incomplete_build(tmp_path, env):
  data = tmp_path / "data"
  proc = subprocess.Popen(
      [sys.executable, "-m", "vlgen_jax.cli", "data", "shapes", "--data-dir", str(data),
       "--resolution", "64", "--train-size", "200000", "--validation-size", "16",
       "--heldout-size", "16"],
      env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    wait_for(lambda: list(data.rglob("incomplete.*")) or proc.poll() is not None,
             "the build's incomplete.* folder")
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    time.sleep(1)  # into the writing of records
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  assert proc.returncode == 143, err[-3000:]
  assert err.strip().splitlines()[-1] == "stopped by SIGTERM"
  assert "Traceback" not in err
  assert not list(data.rglob("incomplete.*"))
