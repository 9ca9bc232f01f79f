"""docs/scaling.md quotes `vlgen model-info` for the Parti presets: every
number there must be what model-info computes today. And
benchmarks/train_step.py must measure the trainer's real step: on CPU it
reports MFU n/a and compiled memory, remat policies change no numbers, a
compile-only run sizes the same program, and a bad mesh is an error row."""
from __future__ import annotations

import json
import math
import pathlib
import re
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
DOC = REPO_ROOT / "docs" / "scaling.md"


def _model_info_table(config_path: str, mesh: str) -> str:
  from vlgen_jax.config import load_config
  from vlgen_jax.train import model_info as info
  from vlgen_jax.train.mesh import parse_mesh
  sizes = info.resolve_mesh(parse_mesh(mesh), None)
  return info.format_table(info.model_info(load_config(str(REPO_ROOT / config_path)), sizes),
                           title=f"model-info {config_path}")


def _value(table: str, label: str) -> str:
  line = next(l for l in table.splitlines() if l.startswith(label))
  return re.split(r"\s{2,}", line)[-1].strip()


def _doc_table_rows() -> list[list[str]]:
  rows = []
  for line in DOC.read_text().splitlines():
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) == 6 and cells[0].startswith("parti_") and cells[2].startswith("`"):
      rows.append(cells)
  return rows


def _doc_model_info_blocks() -> list[tuple[str, str, str]]:
  """(config path, mesh, quoted output) of each `$ vlgen model-info` block."""
  blocks = re.findall(r"```\n\$ vlgen model-info --config (\S+) --mesh (\S+)\n(.*?)```",
                      DOC.read_text(), flags=re.S)
  return [(c, m, out.rstrip("\n")) for c, m, out in blocks]


def _preset_config(preset: str) -> str:
  """"parti_350m" -> "configs/parti.py:350m"."""
  return f"configs/parti.py:{preset.removeprefix('parti_')}"


def test_doc_quotes_every_parti_preset():
  from vlgen_jax.config import load_config_module
  presets = {f"parti_{size}" for size in load_config_module("configs/parti.py").SIZES}
  assert len(presets) == 4
  assert {r[0] for r in _doc_table_rows()} == presets
  assert {"parti_" + c.split(":")[1] for c, _, _ in _doc_model_info_blocks()} == presets


def test_doc_table_matches_model_info():
  rows = _doc_table_rows()
  assert len(rows) >= 8
  for preset, hardware, mesh, params, optimizer, total in rows:
    table = _model_info_table(_preset_config(preset), mesh.strip("`"))
    got = (_value(table, "params per device"), _value(table, "optimizer ("),
           _value(table, "params + optimizer per device"))
    assert got == (params, optimizer, total), f"{preset} on {hardware} ({mesh})"


def test_doc_model_info_output_is_current():
  blocks = _doc_model_info_blocks()
  assert blocks
  for config_path, mesh, quoted in blocks:
    assert _model_info_table(config_path, mesh) == quoted, f"{config_path} --mesh {mesh}"


# ---- benchmarks/train_step.py --------------------------------------------------------

@pytest.fixture(scope="module")
def bench():
  sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
  try:
    import train_step
    yield train_step
  finally:
    sys.path.remove(str(REPO_ROOT / "benchmarks"))


def _run(bench, capsys, argv) -> tuple[int, dict, str]:
  code = bench.main(argv)
  out = capsys.readouterr().out
  result = json.loads(out.strip().splitlines()[-1])
  assert result["benchmark"] == "train_step"
  return code, result, out


def test_train_step_benchmark_on_cpu(bench, capsys, tmp_path):
  small = ["--config", "configs/toy.py", "--config.model.num_layers=1", "--isolate", "no",
           "--steps", "2", "--repeats", "1", "--warmup", "1"]
  json_out = tmp_path / "bench.json"
  code, result, out = _run(bench, capsys, small + [
      "--mesh", "data=-1", "--mesh", "data=3", "--remat", "none,full",
      "--json-out", str(json_out)])
  assert json.loads(json_out.read_text()) == result
  assert code == 1  # the data=3 case cannot be built on 8 devices
  rows = {(r["mesh"], r["remat"]): r for r in result["rows"]}
  assert set(rows) == {("data=-1", "none"), ("data=3", "none"), ("data=-1", "full")}
  assert "needs 3 devices" in rows[("data=3", "none")]["error"]
  ok = [rows[("data=-1", "none")], rows[("data=-1", "full")]]
  for r in ok:
    assert r["platform"] == "cpu" and r["devices"] == 8 and r["mesh_shape"]["data"] == 8
    assert r["mfu"] is None  # no peak FLOP/s for CPUs
    assert r["peak_memory_source"] == "compiled" and r["peak_bytes_per_device"] > 0
    assert r["compile_s"] > 0 and r["step_time_s"] > 0
    assert math.isclose(r["tokens_per_s_per_device"],
                        r["batch_size"] * r["tokens_per_example"] / r["step_time_s"] / 8)
    assert math.isfinite(r["loss"])
  # Remat changes what is stored, never the numbers: same loss after 3 steps.
  assert ok[0]["loss"] == pytest.approx(ok[1]["loss"], rel=1e-5)
  assert "| toy | data=8,fsdp=1,tensor=1 | none | 16 | float32 |" in out
  assert "| n/a |" in out

  # --compile-only sizes the very program that ran.
  code, result, _ = _run(bench, capsys, small + ["--mesh", "data=-1", "--remat", "",
                                                 "--compile-only"])
  assert code == 0
  (row,) = result["rows"]
  assert row["step_time_s"] is None
  assert row["compiled_bytes_per_device"] == ok[0]["compiled_bytes_per_device"]
