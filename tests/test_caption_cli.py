"""`vlgen caption` and the captioner's run loading on the tiny demo: a captioner
trained (a few steps) on the demo's token dataset, with the demo's VQ and
tokenizer. Outputs, R-precision plumbing and one-line user errors."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from vlgen_jax import cli
from vlgen_jax.eval.r_precision import r_precision
from vlgen_jax.sample.captioner import Captioner
from vlgen_jax.shapes import captioning, scenes

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ("total_steps=6", "log_every=3", "eval_every=0", "checkpoint_every=6", "batch_size=8",
        "model.image_vocab_size=16", "model.image_grid=(4,4)", "model.d_model=32",
        "model.num_heads=2", "model.mlp_dim=64", "model.encoder_layers=1",
        "model.decoder_layers=1", "model.text_vocab_size=64", "data.read_threads=1")


@pytest.fixture(scope="module")
def demo(demo_tiny_dir):
  """The tiny demo workdir with a captioner run in demo/caption."""
  args = ["train", "--config", os.path.join(REPO_ROOT, "configs", "caption_shapes.py"),
          "--workdir", str(demo_tiny_dir / "caption"),
          f"--config.data.data_dir={demo_tiny_dir / 'tokens'}",
          f"--config.data.tokenizer={demo_tiny_dir / 'text_tokenizer.model'}",
          *[f"--config.{o}" for o in TINY]]
  if not (demo_tiny_dir / "caption").exists():
    assert cli.main(args) == 0
  return demo_tiny_dir


def _render_folder(folder, n=3, resolution=32):
  os.makedirs(folder, exist_ok=True)
  names = []
  for i in range(n):
    name = f"img{i}.png"
    Image.fromarray(scenes.render(scenes.sample_scene("validation", i), resolution)).save(
        os.path.join(folder, name))
    names.append(name)
  return names


def test_caption_images_writes_captions_tsv(demo, tmp_path, capsys):
  folder = tmp_path / "images"
  names = _render_folder(folder)
  (folder / "notes.txt").write_text("not an image")
  (folder / "broken.png").write_bytes(b"not a png")
  assert cli.main(["caption", "--workdir", str(demo), "--images", str(folder)]) == 0
  assert "1 unreadable files skipped" in capsys.readouterr().out
  rows = [line.split("\t") for line in (folder / "captions.tsv").read_text().splitlines()]
  assert [r[0] for r in rows] == names
  # The same captions as the library on the same images.
  captioner = Captioner.load(str(demo))
  images = [np.asarray(Image.open(folder / n).convert("RGB")) for n in names]
  want, _ = captioner.caption(captioner.encode_images(images))
  assert [r[1] for r in rows] == [" ".join(c.split()) for c in want]
  # A second run would overwrite the folder's captions.tsv: refused.
  assert cli.main(["caption", "--workdir", str(demo), "--images", str(folder)]) == 2
  assert "captions.tsv exists" in capsys.readouterr().err


def test_caption_token_dataset_with_references(demo, tmp_path, capsys):
  out = tmp_path / "val.tsv"
  assert cli.main(["caption", "--workdir", str(demo), "--tokens", str(demo / "tokens"),
                   "--split", "validation", "--num", "5", "--beam-size", "2",
                   "--output", str(out)]) == 0
  assert "exact match with the reference captions" in capsys.readouterr().out
  rows = [line.split("\t") for line in out.read_text().splitlines()]
  assert len(rows) == 5 and all(len(r) == 3 for r in rows)


def test_image_of_the_wrong_size_is_one_error_line(demo, tmp_path, capsys):
  folder = tmp_path / "big"
  _render_folder(folder, n=1, resolution=64)
  assert cli.main(["caption", "--workdir", str(demo), "--images", str(folder)]) == 2
  err = capsys.readouterr().err.strip()
  assert err.count("\n") == 0 and err.startswith("error: img0.png is 64x64x3")
  assert not (folder / "captions.tsv").exists()


@pytest.mark.parametrize("args, message", [
    (["--beam-size", "0"], "beam size must be a positive integer"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
])
def test_option_errors_are_one_line(demo, tmp_path, capsys, args, message):
  folder = tmp_path / "imgs"
  _render_folder(folder, n=1)
  assert cli.main(["caption", "--workdir", str(demo), "--images", str(folder), *args]) == 2
  assert message in capsys.readouterr().err


def test_not_a_captioner_run(demo, capsys):
  assert cli.main(["caption", "--workdir", str(demo / "t2i"), "--images", str(demo)]) == 2
  assert "no captioner run" in capsys.readouterr().err


def test_shapes_evaluation_and_r_precision_run_end_to_end(demo):
  captioner = Captioner.load(str(demo), batch_size=8)
  result, captions = captioning.shapes_caption_eval(captioner, "validation", 12, R=5)
  assert result["n"] == 12 and len(captions) == 12
  for key in ("caption_fidelity", "exact_match", "r_precision_top1", "r_precision_top5"):
    assert 0.0 <= result[key] <= 1.0, key
  assert result["r_precision_top5"] == 1.0  # 5 candidates: the own caption is always in the top 5
  images, refs = captioning.shapes_split("validation", 12, 32)
  tokens = captioner.encode_images(images)
  a = r_precision(captioner, tokens, refs, R=4, seed=1)
  assert a == r_precision(captioner, tokens, refs, R=4, seed=1)  # seeded
