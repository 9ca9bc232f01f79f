"""`vlgen eval --images DIR` on hostile folders (vlgen_jax/eval/report.py):
undecodable images and decompression bombs are skipped and counted,
a non-UTF-8 captions.tsv or a name leading out of the folder (a symlink
included) is one error line, a byte order mark is ignored."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from vlgen_jax import cli


def _folder(tmp_path, lines: bytes, good: int = 2):
  folder = tmp_path / "images"
  folder.mkdir()
  rng = np.random.default_rng(0)
  for i in range(good):
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
  (folder / "captions.tsv").write_bytes(lines)
  return folder


def test_garbage_and_bomb_images_are_skipped_and_counted(tmp_path, capsys):
  folder = _folder(tmp_path, b"\xef\xbb\xbf0.png\ta red circle\r\ngarbage.png\tx\r\n"
                             b"bomb.png\ty\r\n1.png\ta blue square\r\n")
  (folder / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
  Image.new("L", (6000, 6000)).save(folder / "bomb.png")  # 36 Mpx in a few kB
  assert cli.main(["eval", "--images", str(folder), "--evaluators", "shapes"]) == 0
  captured = capsys.readouterr()
  assert ("warning: skipped 2 image(s) of " + str(folder) + ": too_large 1, undecodable_image 1"
          in captured.err)
  results = json.loads(captured.out.strip().splitlines()[-1])
  assert results["n"] == 2 and results["skipped"] == {"too_large": 1, "undecodable_image": 1}
  assert "Traceback" not in captured.err


@pytest.mark.parametrize("lines, message", [
    ("0.png\tun cercle rouge \xe0 gauche\n".encode("latin-1"),
     "{tsv}:1: not UTF-8 text; save the file as UTF-8"),
    (b"\xef\xbb\xbfmissing.png\tx\n", "{tsv}:1: image not found in {folder}: 'missing.png'"),
    (b"escape.png\tx\n", "{tsv}:1: image not found in {folder}: 'escape.png'"),
])
def test_caption_file_mistakes_are_one_line(tmp_path, capsys, lines, message):
  folder = _folder(tmp_path, lines)
  outside = tmp_path / "secret.png"
  Image.new("RGB", (32, 32)).save(outside)
  (folder / "escape.png").symlink_to(outside)  # inside by name, outside by target
  assert cli.main(["eval", "--images", str(folder), "--evaluators", "shapes"]) == 2
  err = capsys.readouterr().err
  assert err == "error: " + message.format(tsv=folder / "captions.tsv", folder=folder) + "\n"
