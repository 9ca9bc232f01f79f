"""benchmarks/sample_run.py: AR vs Jacobi on a trained run (the tiny demo's)."""
import importlib.util
import json
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
  spec = importlib.util.spec_from_file_location("sample_run", ROOT / "benchmarks" / "sample_run.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_times_ar_and_jacobi_on_the_run(bench, demo_tiny_dir, tmp_path):
  prompts = tmp_path / "prompts.txt"
  # 8: the tests' forced host devices split the batch data-parallel.
  prompts.write_text("a red circle\n\n" + "a blue square on the left\n" * 7)
  out = tmp_path / "result.json"
  assert bench.main(["--workdir", str(demo_tiny_dir), "--prompts", str(prompts), "--batch", "8",
                     "--draft-lens", "2,4", "--repeats", "2", "--json-out", str(out)]) == 0
  result = json.loads(out.read_text())
  rows = {(r["decoding"], r["draft_len"]): r for r in result["rows"]}
  assert set(rows) == {("ar", 0), ("jacobi", 2), ("jacobi", 4)}
  assert rows[("ar", 0)]["calls"] == [16, 16]  # 4x4 tokens, one per call
  for k in (2, 4):
    calls = rows[("jacobi", k)]["calls"]
    assert all(16 / k <= c <= 16 for c in calls), calls  # at least one token per call
  assert rows[("ar", 0)]["speedup_vs_ar"] == 1.0
  for r in result["rows"]:
    assert r["seconds"] > 0
    assert r["images_per_s"] == pytest.approx(8 / r["seconds"])


def test_bad_input_is_one_error_line(bench, demo_tiny_dir, tmp_path, capsys):
  assert bench.main(["--workdir", str(demo_tiny_dir), "--prompts", str(tmp_path / "no.txt")]) == 2
  assert capsys.readouterr().err.startswith("error: --prompts")
  one = tmp_path / "one.txt"
  one.write_text("a red circle\n")
  assert bench.main(["--workdir", str(demo_tiny_dir), "--prompts", str(one), "--batch", "2"]) == 2
  assert "has 1 captions" in capsys.readouterr().err
  assert bench.main(["--workdir", str(tmp_path), "--prompts", str(one), "--batch", "1"]) == 2
  assert capsys.readouterr().err.startswith("error:")
  with pytest.raises(SystemExit) as e:
    bench.main(["--workdir", str(demo_tiny_dir), "--prompts", str(one), "--draft-lens", "4,x"])
  assert e.value.code == 2
