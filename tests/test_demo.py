"""End to end through the CLI: `vlgen demo` (tiny recipe) runs every stage,
re-runs skip finished stages, and `vlgen sample` / `vlgen eval` work on the
demo workdir and on folders, with one-line errors for bad options."""
import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from vlgen_jax import cli
from vlgen_jax.demo import STAGES


@pytest.fixture(scope="module")
def demo_dir(demo_tiny_dir):
  return demo_tiny_dir


def test_demo_runs_every_stage_and_writes_a_summary(demo_dir):
  state = json.loads((demo_dir / "demo.json").read_text())
  assert all(state["stages"][s]["done"] for s in STAGES)
  results = json.loads((demo_dir / "eval" / "results.json").read_text())
  assert results["n"] == 8 and 0.0 <= results["shapes"]["fidelity"] <= 1.0
  assert set(state["summary"]["stage_seconds"]) == set(STAGES)
  for path in ("eval/grid.png", "samples/grid.png", "samples/captions.tsv",
               "t2i/export/assets/text_tokenizer.model", "tokens/dataset_info.json"):
    assert (demo_dir / path).exists(), path


def test_demo_rerun_skips_finished_stages(demo_dir, tmp_path, capsys):
  import shutil
  work = tmp_path / "demo"  # a copy: the shared workdir is read-only (conftest.py)
  shutil.copytree(demo_dir, work)
  before = json.loads((work / "demo.json").read_text())["stages"]
  assert cli.main(["demo", "--workdir", str(work), "--config", "configs/demo_tiny.py"]) == 0
  out = capsys.readouterr().out
  assert all(f"[demo] {s}: done earlier" in out for s in STAGES)
  assert json.loads((work / "demo.json").read_text())["stages"] == before


def test_sample_on_demo_workdir_writes_pngs_tsv_grid(demo_dir, tmp_path, capsys):
  out = tmp_path / "samples"
  long_prompt = " ".join(["a large red circle in the center and"] * 20)
  rc = cli.main(["sample", "--workdir", str(demo_dir), "--outdir", str(out),
                 "--prompt", "a small blue square at the top", "--prompt", long_prompt,
                 "--num-per-prompt", "3", "--batch-size", "4", "--top-k", "5", "--top-p", "0.9",
                 "--cfg-scale", "2", "--seed", "1"])
  assert rc == 0
  captured = capsys.readouterr()
  assert "images/s" in captured.out and "truncated" in captured.err
  with open(out / "captions.tsv") as f:
    rows = list(csv.reader(f, delimiter="\t"))
  assert [r[0] for r in rows] == [f"{i:05d}.png" for i in range(6)]
  assert rows[0][1] == "a small blue square at the top"
  for name, _ in rows:
    im = np.asarray(Image.open(out / name))
    assert im.shape == (32, 32, 3) and im.dtype == np.uint8
  assert (out / "grid.png").exists()
  # Same seed, same images; batch size does not change them.
  out2 = tmp_path / "again"
  assert cli.main(["sample", "--workdir", str(demo_dir), "--outdir", str(out2), "--prompt",
                   "a small blue square at the top", "--num-per-prompt", "3", "--batch-size", "1",
                   "--top-k", "5", "--top-p", "0.9", "--cfg-scale", "2", "--seed", "1"]) == 0
  for i in range(3):
    np.testing.assert_array_equal(np.asarray(Image.open(out2 / f"{i:05d}.png")),
                                  np.asarray(Image.open(out / f"{i:05d}.png")))


def test_eval_scores_a_folder_of_images(demo_dir, tmp_path, capsys):
  assert cli.main(["eval", "--images", str(demo_dir / "samples")]) == 0
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  # The demo samples 2 prompts x 2; the empty (unconditional) prompt is not scored.
  assert summary["n"] == 4 and summary["shapes"]["n"] == 2
  assert summary["shapes"]["unscored"] == 2
  # The folder says which run sampled it, and so which evaluators apply;
  # a folder that does not must name them.
  assert json.loads((demo_dir / "samples" / "sample.json").read_text())["evaluators"] == ["shapes"]
  bare = tmp_path / "bare"
  shutil.copytree(demo_dir / "samples", bare)
  (bare / "sample.json").unlink()
  assert cli.main(["eval", "--images", str(bare)]) == 2
  assert "name the evaluators with --evaluators" in capsys.readouterr().err
  assert cli.main(["eval", "--images", str(bare), "--evaluators", "shapes"]) == 0
  assert cli.main(["eval", "--images", str(bare), "--evaluators", "nope"]) == 2
  assert "unknown evaluator 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["--top-p", "0"], "top-p must be in (0, 1]"),
    (["--top-p", "1.5"], "top-p must be in (0, 1]"),
    (["--top-k", "-1"], "top-k must be a non-negative integer"),
    (["--temperature", "-2"], "temperature must be >= 0"),
    (["--plausibility", "1"], "plausibility must be in [0, 1)"),
    (["--num-per-prompt", "0"], "--num-per-prompt must be >= 1"),
    (["--step", "999"], "no checkpoint for step 999"),
])
def test_sample_option_errors_are_one_line(demo_dir, tmp_path, capsys, args, message):
  rc = cli.main(["sample", "--workdir", str(demo_dir), "--outdir", str(tmp_path), "--prompt",
                 "a large red circle in the center", *args])
  err = capsys.readouterr().err.strip()
  assert rc == 2 and message in err and len(err.splitlines()) == 1, err


def test_sample_missing_workdir_and_prompts_file(tmp_path, capsys):
  assert cli.main(["sample", "--workdir", str(tmp_path / "nope"), "--outdir", str(tmp_path),
                   "--prompt", "x"]) == 2
  assert "workdir not found" in capsys.readouterr().err
  assert cli.main(["sample", "--workdir", str(tmp_path), "--outdir", str(tmp_path),
                   "--prompts", str(tmp_path / "missing.txt")]) == 2
  assert "prompts file not found" in capsys.readouterr().err


@pytest.mark.multiprocess
def test_two_process_sampling_equals_one_process(demo_dir, tmp_path, repo_root):
  """`vlgen sample` as 2 jax.distributed processes x 4 CPU devices (through
  launch/multiprocess_local.sh) writes the same images as one process."""
  prompts = tmp_path / "prompts.txt"
  prompts.write_text("a large red circle in the center\na small white square at the bottom\n")
  common = ["--workdir", str(demo_dir), "--prompts", str(prompts), "--num-per-prompt", "3",
            "--batch-size", "8", "--top-k", "4", "--seed", "3"]
  env = dict(os.environ, VLGEN_VENV=sys.prefix, VLGEN_SKIP_INSTALL="1")
  proc = subprocess.run(["bash", str(repo_root / "launch" / "multiprocess_local.sh"), "2", "sample",
                         *common, "--outdir", str(tmp_path / "two")],
                        env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert cli.main(["sample", *common, "--outdir", str(tmp_path / "one")]) == 0
  names = sorted(p.name for p in (tmp_path / "one").glob("0*.png"))
  assert len(names) == 6
  assert (tmp_path / "two" / "captions.tsv").read_text() == (tmp_path / "one" / "captions.tsv").read_text()
  for name in names:
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "two" / name)),
                                  np.asarray(Image.open(tmp_path / "one" / name)))


def test_a_training_stage_stopped_by_sigterm_is_not_marked_done(demo_dir, tmp_path, capsys):
  """`vlgen train` returns normally after SIGTERM (preemption); the demo must
  then stop without marking the stage done, and a re-run resumes it."""
  import shutil
  work = tmp_path / "demo"
  shutil.copytree(demo_dir, work)
  state = json.loads((work / "demo.json").read_text())
  for stage in ("t2i", "sample", "eval"):
    state["stages"].pop(stage)
  (work / "demo.json").write_text(json.dumps(state))
  shutil.rmtree(work / "t2i")
  recipe = tmp_path / "demo_sigterm.py"
  recipe.write_text(
      "import importlib.util\n"
      f"spec = importlib.util.spec_from_file_location('tiny', {os.path.abspath('configs/demo_tiny.py')!r})\n"
      "tiny = importlib.util.module_from_spec(spec)\n"
      "spec.loader.exec_module(tiny)\n\n"
      "def get_config():\n"
      "  c = tiny.get_config()\n"
      "  c.t2i.overrides = tuple(c.t2i.overrides) + ('debug.sigterm_after_step=2',)\n"
      "  return c\n")
  args = ["demo", "--workdir", str(work), "--config", str(recipe)]
  assert cli.main(args) == 0
  out = capsys.readouterr().out
  assert "[demo] t2i: stopped before its last step (total_steps 4, latest checkpoint: 2)" in out
  assert "t2i" not in json.loads((work / "demo.json").read_text())["stages"]
  assert "[demo] sample" not in out and "[demo] eval" not in out  # stopped there

  assert cli.main(args) == 0  # resumes from step 2 (the signal was at step 2 only)
  out = capsys.readouterr().out
  assert "[demo] t2i: finished" in out and "[demo] eval: finished" in out
  state = json.loads((work / "demo.json").read_text())
  assert all(state["stages"][s]["done"] for s in STAGES)


def test_sample_jacobi_and_bfloat16_on_demo_workdir(demo_dir, tmp_path, capsys):
  """Greedy Jacobi decoding gives the AR images; the final line names the mode."""
  common = ["sample", "--workdir", str(demo_dir), "--prompt", "a small blue square at the top",
            "--num-per-prompt", "2", "--batch-size", "2", "--temperature", "0"]
  assert cli.main(common + ["--outdir", str(tmp_path / "ar")]) == 0
  assert "(ar decoding" in capsys.readouterr().out
  assert cli.main(common + ["--outdir", str(tmp_path / "jacobi"), "--decoding", "jacobi",
                            "--draft-len", "4"]) == 0
  assert "(jacobi decoding, draft 4" in capsys.readouterr().out
  for i in range(2):
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "jacobi" / f"{i:05d}.png")),
                                  np.asarray(Image.open(tmp_path / "ar" / f"{i:05d}.png")))
  assert cli.main(common + ["--outdir", str(tmp_path / "bf16"), "--dtype", "bfloat16"]) == 0
  assert "bfloat16)" in capsys.readouterr().out
  assert cli.main(common + ["--outdir", str(tmp_path / "bad"), "--draft-len", "0",
                            "--decoding", "jacobi"]) == 2
  assert "error: draft length must be a positive integer" in capsys.readouterr().err
