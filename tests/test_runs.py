"""Runs know their parts (vlgen_jax/runs.py): a t2i run's export carries its
tokenizer and VQ, `vlgen sample`/`eval` never guess from a folder layout,
and a VQ or tokenizer that does not fit is one error naming both sides."""
from __future__ import annotations

import json
import shutil

import numpy as np
from PIL import Image

from vlgen_jax import cli, runs


def test_export_carries_the_vq_and_samples_after_the_vq_run_is_gone(demo_tiny_dir, tmp_path):
  run = demo_tiny_dir / "t2i"
  assert runs.is_run(str(run / "export" / "assets" / "vq"))
  # The copy is the VQ run's export, file for file.
  for f in (demo_tiny_dir / "vq" / "export").rglob("*"):
    if f.is_file():
      copy = run / "export" / "assets" / "vq" / "export" / f.relative_to(demo_tiny_dir / "vq" / "export")
      assert copy.read_bytes() == f.read_bytes(), f
  alone = tmp_path / "alone"
  shutil.copytree(run, alone)  # no sibling vq/, no token dataset needed
  out_a, out_b = tmp_path / "a", tmp_path / "b"
  args = ["--prompt", "a large red circle in the center", "--num-per-prompt", "2", "--seed", "3"]
  assert cli.main(["sample", "--workdir", str(alone), "--outdir", str(out_a), *args]) == 0
  assert cli.main(["sample", "--workdir", str(demo_tiny_dir), "--outdir", str(out_b), *args]) == 0
  for name in ("00000.png", "00001.png"):
    np.testing.assert_array_equal(np.asarray(Image.open(out_a / name)),
                                  np.asarray(Image.open(out_b / name)))


def test_a_sibling_vq_folder_is_never_guessed(demo_tiny_dir, tmp_path, capsys):
  """A folder holding t2i/ and an unrelated vq/ is not a demo workdir: no
  demo.json names its runs, so nothing is taken from the layout."""
  fake = tmp_path / "fake"
  fake.mkdir()
  shutil.copytree(demo_tiny_dir / "t2i", fake / "t2i")
  assert cli.main(["sample", "--workdir", str(fake), "--outdir", str(tmp_path / "o"),
                   "--prompt", "x"]) == 2
  assert "no t2i run in" in capsys.readouterr().err
  assert runs.demo_runs(str(demo_tiny_dir))["t2i"].endswith("t2i")


def test_a_vq_that_does_not_fit_is_one_error_naming_both(demo_tiny_dir, tmp_path, capsys):
  # A VQ run with other codes: the tiny demo's VQ with a changed codebook size.
  other = tmp_path / "vq_other"
  shutil.copytree(demo_tiny_dir / "vq" / "export", other / "export")
  config = json.loads((other / "export" / "config.json").read_text())
  config["model"]["num_codes"] = 32
  (other / "export" / "config.json").write_text(json.dumps(config))
  rc = cli.main(["sample", "--workdir", str(demo_tiny_dir), "--outdir", str(tmp_path / "o"),
                 "--prompt", "x", "--vq-workdir", str(other)])
  err = capsys.readouterr().err.strip()
  assert rc == 2 and len(err.splitlines()) == 1, err
  assert str(other) in err and "t2i run" in err and "16 codes" in err


def test_a_tokenizer_larger_than_the_model_vocabulary_is_one_error(demo_tiny_dir, tmp_path,
                                                                   capsys):
  from vlgen_jax.text.tokenizer import TOKENIZER_ASSET, TextTokenizer
  rng = np.random.default_rng(0)
  words = ["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), 6)) for _ in range(400)]
  corpus = tmp_path / "corpus.txt"
  corpus.write_text("\n".join(" ".join(rng.choice(words, 8)) for _ in range(2000)) + "\n")
  big = tmp_path / "big.model"
  assert cli.main(["text-tokenizer", "--text-file", str(corpus), "--vocab-size", "300",
                   "--output", str(big)]) == 0
  assert TextTokenizer.from_file(str(big)).vocab_size > 64
  run = tmp_path / "run"
  shutil.copytree(demo_tiny_dir / "t2i", run)
  shutil.copy(big, run / "export" / "assets" / TOKENIZER_ASSET)
  capsys.readouterr()
  assert cli.main(["sample", "--workdir", str(run), "--outdir", str(tmp_path / "o"),
                   "--prompt", "x"]) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and "pieces but the t2i run" in err and "embeds 64" in err, err
