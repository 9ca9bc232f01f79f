"""`vlgen edit`: input checks (one line, exit 2) and, on a tiny trained run of
each editing style, pixels outside the region are exactly the input's."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from trainer_helpers import REPO_ROOT, demo_t2i_args
from vlgen_jax import cli
from vlgen_jax.errors import UserError
from vlgen_jax.sample import edit


def _png(path, array, mode=None):
  Image.fromarray(array, mode).save(path)
  return str(path)


def test_read_image_converts_modes_and_rejects_sizes(tmp_path):
  rgba = np.zeros((32, 32, 4), np.uint8)
  rgba[..., 0], rgba[..., 3] = 200, 255
  got = edit.read_image(_png(tmp_path / "a.png", rgba), 32)
  assert got.shape == (32, 32, 3) and (got[..., 0] == 200).all()
  gray = edit.read_image(_png(tmp_path / "g.png", np.full((32, 32), 7, np.uint8)), 32)
  assert gray.shape == (32, 32, 3) and (gray == 7).all()
  with pytest.raises(UserError, match="is 40x32 px; the run's images are 32x32"):
    edit.read_image(_png(tmp_path / "b.png", np.zeros((32, 40, 3), np.uint8)), 32)
  (tmp_path / "junk.png").write_bytes(b"not a png")
  with pytest.raises(UserError, match="cannot read image"):
    edit.read_image(str(tmp_path / "junk.png"), 32)


@pytest.mark.parametrize("box,match", [("0,0,0,8", "is empty"), ("8,8,4,12", "is empty"),
                                       ("30,30,40,40", "outside the 32x32 canvas"),
                                       ("-1,0,4,4", "outside"), ("1,2,3", "must be x0,y0,x1,y1")])
def test_bad_boxes(box, match):
  with pytest.raises(UserError, match=match):
    edit.box_mask(box, 32)


def test_masks_and_token_regions(tmp_path):
  m = edit.box_mask("4,8,12,10", 32)
  assert m.sum() == 8 * 2 and m[8:10, 4:12].all()
  assert (edit.box_mask("0,0,16,16", 32, outside=True).sum() == 32 * 32 - 256)
  with pytest.raises(UserError, match="keeps the whole canvas"):
    edit.box_mask("0,0,32,32", 32, outside=True)
  with pytest.raises(UserError, match="is empty"):
    edit.read_mask(_png(tmp_path / "m.png", np.zeros((32, 32), np.uint8)), 32)
  # 4x4 tokens of 8 px: the box touches tokens (1,0) and (1,1).
  tokens = edit.regenerated_tokens(m, (4, 4))
  assert np.flatnonzero(tokens).tolist() == [4, 5]
  assert edit.token_region(tokens, (4, 4), 32).sum() == 2 * 64
  redraw = edit.redraw_tokens(0, 3, np.ones(16, bool), 0.25)
  assert (redraw.sum(axis=1) == 4).all() and not np.array_equal(redraw[0], redraw[1])


@pytest.fixture(scope="module", params=["masked", "encdec"])
def tiny_run(request, demo_tiny_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp(f"edit_{request.param}")
  cwd = os.getcwd()
  os.chdir(REPO_ROOT)
  try:
    assert cli.main(demo_t2i_args(demo_tiny_dir, workdir / "t2i",
                                  f"--config.model.family={request.param}",
                                  "--config.sample.steps=4")) == 0
  finally:
    os.chdir(cwd)
  return workdir / "t2i"


def test_edit_pastes_exactly_outside_the_region(tiny_run, tmp_path, capsys):
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
  src = _png(tmp_path / "in.png", image)
  out = tmp_path / "out"
  assert cli.main(["edit", "--workdir", str(tiny_run), "--image", src, "--prompt",
                   "a large red circle in the center", "--box", "8,8,20,16",
                   "--variations", "2", "--outdir", str(out)]) == 0
  region = edit.box_mask("8,8,20,16", 32)
  for name in ("00000.png", "00001.png"):
    got = np.asarray(Image.open(out / name).convert("RGB"))
    np.testing.assert_array_equal(got[~region], image[~region])
    assert not np.array_equal(got[region], image[region])  # something was regenerated
  # Bad input: one line, exit 2.
  for extra, match in ((["--box", "0,0,40,4"], "outside the 32x32 canvas"),
                       (["--box", "4,4,4,8"], "is empty")):
    capsys.readouterr()
    rc = cli.main(["edit", "--workdir", str(tiny_run), "--image", src, "--prompt", "x",
                   *extra, "--outdir", str(tmp_path / "bad")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and match in err, err
  big = _png(tmp_path / "big.png", np.zeros((64, 64, 3), np.uint8))
  rc = cli.main(["edit", "--workdir", str(tiny_run), "--image", big, "--prompt", "x",
                 "--box", "0,0,4,4", "--outdir", str(tmp_path / "bad")])
  assert rc == 2 and "is 64x64 px" in capsys.readouterr().err
