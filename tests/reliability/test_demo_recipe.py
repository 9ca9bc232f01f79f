"""`vlgen demo` on a finished workdir with an edited recipe: one line naming
the changed stages and what to do, and demo.json keeps the old recipe (its
results are never attributed to the new one)."""
from __future__ import annotations

import shutil

from trainer_helpers import REPO_ROOT
from vlgen_jax import cli

RECIPE = str(REPO_ROOT / "configs" / "demo_tiny.py")


def test_an_edited_recipe_is_one_line_and_changes_nothing(tmp_path, capsys, demo_tiny_dir):
  workdir = tmp_path / "demo"  # moved: recorded commands name the workdir as WORKDIR
  shutil.copytree(demo_tiny_dir, workdir)
  state = (workdir / "demo.json").read_bytes()

  assert cli.main(["demo", "--workdir", str(workdir), "--config", RECIPE]) == 0
  assert "[demo] t2i: done earlier" in capsys.readouterr().out  # unchanged: all skipped

  state = (workdir / "demo.json").read_bytes()
  assert cli.main(["demo", "--workdir", str(workdir), "--config", RECIPE,
                   "--config.sample.num_per_prompt=3", "--config.eval.num=4"]) == 2
  captured = capsys.readouterr()
  assert captured.err == (
      f"error: the demo recipe changed since {workdir} was run: stage(s) sample, eval, "
      "eval_rerank would now run differently and their results are from the old recipe; use a "
      "new --workdir, or rerun with --redo sample,eval,eval_rerank\n")
  assert "[demo]" not in captured.out
  assert (workdir / "demo.json").read_bytes() == state

  assert cli.main(["demo", "--workdir", str(workdir), "--config", RECIPE,
                   "--config.t2i.overrides=('total_steps=5',)"]) == 2
  assert "stage(s) t2i would now run differently" in capsys.readouterr().err
