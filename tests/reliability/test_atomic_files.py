"""vlgen_jax/files.py: a write that fails leaves the old file and no temporary."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from vlgen_jax import files
from vlgen_jax.images import save_png


def test_write_json_and_text_replace_the_file(tmp_path):
  path = str(tmp_path / "r.json")
  files.write_json(path, {"b": 1, "a": [1, 2]}, sort_keys=True)
  files.write_json(path, {"c": 3})
  assert json.load(open(path)) == {"c": 3}
  files.write_text(path, "x\n")
  assert open(path).read() == "x\n"
  assert os.listdir(tmp_path) == ["r.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
  path = str(tmp_path / "r.json")
  files.write_json(path, {"old": True})
  with pytest.raises(TypeError):
    files.write_json(path, {"new": object()})  # not JSON: fails mid-write
  with pytest.raises(RuntimeError):
    with files.atomic_path(path) as tmp:
      open(tmp, "w").write("partial")
      raise RuntimeError("interrupted")
  assert json.load(open(path)) == {"old": True}
  assert os.listdir(tmp_path) == ["r.json"]


def test_npz_writers_keep_their_extension(tmp_path):
  path = str(tmp_path / "w.npz")
  with files.atomic_path(path, suffix=".npz") as tmp:
    np.savez(tmp, a=np.arange(3))
  assert np.load(path)["a"].tolist() == [0, 1, 2]
  assert os.listdir(tmp_path) == ["w.npz"]


def test_save_png_is_atomic(tmp_path):
  path = str(tmp_path / "grid.png")
  image = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
  save_png(image, path)
  with pytest.raises(TypeError):
    save_png(np.zeros((2, 2, 7), np.uint8), path)  # PIL cannot write 7 channels
  np.testing.assert_array_equal(np.asarray(Image.open(path)), image)
  assert os.listdir(tmp_path) == ["grid.png"]
