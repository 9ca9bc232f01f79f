"""`vlgen demo --data DIR` on a dataset made here that is not shapes
(procedural two-color textures, captions of another grammar; see
own_data_helpers.py): tar shards with validation/, and a folder without
validation/ holding bad records and resumed after an interruption. Every run
uses the hidden `tiny` budget (seconds of training, nothing to quality)."""
import json
import os
import subprocess
import sys

import pytest

import own_data_helpers as helpers
from vlgen_jax import cli

# Each demo compiles four programs (VQ and t2i train steps, sampler, VQ
# decoder): ~3 min on a quiet 2-core CPU, ~15 min on a shared, loaded one.
pytestmark = pytest.mark.timeout(2400)

OWN_STAGES = ("tokenizer", "vq", "encode", "t2i", "sample", "eval")
TINY = ["--budget", "tiny", "--resolution", "32"]


@pytest.fixture(scope="module")
def tar_data(tmp_path_factory):
  root = tmp_path_factory.mktemp("textures_tar")
  examples = helpers.make_examples(96, px=40, seed=0)  # resized to 32 by the pipeline
  helpers.write_tar_shards(root / "train", examples[:80], per_shard=32)
  helpers.write_tar_shards(root / "validation", examples[80:], per_shard=32)
  return root


@pytest.fixture(scope="module")
def tar_demo(tar_data, tmp_path_factory, repo_root):
  """The demo run in a subprocess that reports which modules it imported."""
  work = tmp_path_factory.mktemp("own_tar_demo")
  code = ("import json, sys\n"
          "from vlgen_jax import cli\n"
          f"rc = cli.main(['demo', '--workdir', {str(work)!r}, '--data', {str(tar_data)!r}, "
          f"*{TINY!r}])\n"
          "print('MODULES ' + json.dumps(sorted(sys.modules)))\n"
          "sys.exit(rc)\n")
  env = {**os.environ, "PYTHONPATH": str(repo_root), "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": os.environ["XLA_FLAGS"] + " --xla_force_host_platform_device_count=1"}
  out = subprocess.run([sys.executable, "-c", code], cwd=repo_root, env=env,
                       capture_output=True, text=True, timeout=1500)
  assert out.returncode == 0, out.stderr[-3000:]
  line = [l for l in out.stdout.splitlines() if l.startswith("MODULES ")][-1]
  return work, json.loads(line[len("MODULES "):]), out.stdout


def test_tar_demo_runs_end_to_end_without_shapes(tar_demo):
  work, modules, stdout = tar_demo
  state = json.loads((work / "demo.json").read_text())
  assert all(state["stages"][s]["done"] for s in OWN_STAGES)
  assert "data" not in state["stages"]
  # The recipe is printed and recorded, and derived from the data.
  recipe = json.loads((work / "recipe.json").read_text())
  assert recipe["data"]["source"] == "tar"
  assert recipe["data"]["validation_split"] == "validation"
  assert recipe["recipe"]["measured"]["num_train"] == 80
  assert recipe["recipe"]["vq_factor"] == 8 and recipe["recipe"]["token_grid"] == 4
  assert "[demo] recipe (tiny, 32 px)" in stdout
  # Prompts are validation captions of this grammar.
  prompts = (work / "prompts.txt").read_text().splitlines()
  assert prompts[-1] == "" and all(" and " in p for p in prompts[:-1])
  results = json.loads((work / "eval" / "results.json").read_text())
  assert results["retrieval"]["n"] == results["retrieval"]["R"] == 16
  assert 0.0 <= results["retrieval"]["top1"] <= results["retrieval"]["top5"] <= 1.0
  assert not [m for m in modules if m.startswith("vlgen_jax.shapes")]
  assert "vlgen_jax.eval.retrieval" in modules  # the check sees what ran


def test_sample_and_eval_on_the_own_data_run(tar_demo, tmp_path, capsys):
  work = tar_demo[0]
  assert cli.main(["sample", "--workdir", str(work), "--outdir", str(tmp_path / "s"),
                   "--prompt", "teal and black checks, coarse", "--num-per-prompt", "2"]) == 0
  assert (tmp_path / "s" / "grid.png").exists()
  assert len(list((tmp_path / "s").glob("*.png"))) == 3  # 2 samples + grid
  assert cli.main(["eval", "--workdir", str(work), "--num", "8",
                   "--report", str(tmp_path / "e")]) == 0
  results = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert results["retrieval"]["n"] == 8 and "shapes" not in results
  # With --prompts there are no reference images: no retrieval.
  (tmp_path / "p.txt").write_text("ivory and violet rings, fine\n")
  assert cli.main(["eval", "--workdir", str(work), "--prompts", str(tmp_path / "p.txt"),
                   "--report", str(tmp_path / "e2")]) == 0
  assert "retrieval" not in json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_folder_without_validation_with_bad_records_resumed(tmp_path, capsys):
  from vlgen_jax import recipe as recipe_lib
  data = tmp_path / "data"
  examples = helpers.make_examples(100, px=32, seed=1)
  helpers.write_folder(data / "train", examples,
                       extra_lines="missing.png\tblack and teal dots, fine\n"
                                   "00001.png\t\n")
  (data / "train" / "00003.png").write_bytes(b"not a png")
  work = tmp_path / "work"
  # Interrupted: the t2i run is stopped by SIGTERM after step 2 (checkpoint
  # saved); the same command resumes it and runs the remaining stages.
  c = recipe_lib.build(str(data), resolution=32, budget="tiny")
  t2i = tuple(c.t2i.overrides) + ("debug.sigterm_after_step=2",)
  args = ["demo", "--workdir", str(work), "--data", str(data), *TINY,
          f"--config.t2i.overrides={t2i!r}"]
  assert cli.main(args) == 0
  state = json.loads((work / "demo.json").read_text())
  assert "t2i" not in state["stages"] and state["stages"]["encode"]["done"]
  capsys.readouterr()
  assert cli.main(args) == 0
  captured = capsys.readouterr()
  for stage in ("tokenizer", "vq", "encode"):
    assert f"[demo] {stage}: done earlier" in captured.out
  assert "resumed from step 2" in captured.err
  state = json.loads((work / "demo.json").read_text())
  assert all(state["stages"][s]["done"] for s in OWN_STAGES)
  # Validation is the last 5 records of train/ (102 lines: 97 + 5), recorded:
  # 00097-00099, missing.png and the empty caption of 00001.png.
  recipe = json.loads((work / "recipe.json").read_text())
  assert recipe["data"]["train_split"] == "train[:97]"
  assert recipe["data"]["validation_split"] == "train[97:]"
  assert recipe["data"]["validation_held_out"] is True
  # The bad records were counted and skipped, and the run went on: the
  # token dataset holds every good train record.
  info = json.loads((work / "tokens" / "dataset_info.json").read_text())
  splits = info["splits"]
  assert splits["train"]["num_records"] == 97 - 1  # 00003 is not a png
  assert splits["validation"]["num_records"] == 5 - 2  # missing.png, empty caption


@pytest.mark.parametrize("case, message", [
    ("missing", "is not a folder"),
    ("empty_train", "is empty"),
    ("no_captions", "has images but no captions"),
    ("budget", "unknown --budget 'huge'"),
    ("resolution", "not divisible by the VQ factor 8"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, case, message):
  data = tmp_path / "data"
  extra = []
  if case != "missing":
    (data / "train").mkdir(parents=True)
  if case in ("no_captions", "budget", "resolution"):
    import numpy as np
    from PIL import Image
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(data / "train" / "a.png")
  if case in ("budget", "resolution"):
    (data / "train" / "captions.tsv").write_text("a.png\tsomething\n")
  if case == "budget":
    extra = ["--budget", "huge"]
  if case == "resolution":
    extra = ["--resolution", "60"]
  work = tmp_path / "work"
  assert cli.main(["demo", "--workdir", str(work), "--data", str(data), *extra]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
  assert not work.exists()


def test_recipe_vq_size_follows_budget_and_detail(tmp_path):
  """The quick VQ is the shapes quick start's size whatever the data (so a
  quick run costs what that does); the full budget widens it for detailed
  data only."""
  import numpy as np
  from vlgen_jax import recipe as recipe_lib
  detailed = helpers.make_examples(40, px=64, seed=2)  # fine textures
  flat = [(np.full((64, 64, 3), 40 * (i % 5), np.uint8), f"plain color {i % 5}")
          for i in range(40)]
  for name, examples, full_vq in (("detailed", detailed, ("256", "2")),
                                  ("flat", flat, ("192", "1"))):
    helpers.write_folder(tmp_path / name / "train", examples)
    for budget, want in (("quick", ("192", "1")), ("full", full_vq)):
      c = recipe_lib.build(str(tmp_path / name), resolution=64, budget=budget)
      vq = dict(o.split("=", 1) for o in c.vq.overrides)
      assert (vq["model.ch"], vq["model.num_res_blocks"]) == want, (name, budget)
      assert c.recipe.measured.flat == (name == "flat")
