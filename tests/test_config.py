import ml_collections
import pytest

from vlgen_jax import cli
from vlgen_jax.config import apply_override, load_config
from vlgen_jax.errors import UserError


def _cfg():
  c = ml_collections.ConfigDict()
  c.total_steps = 10
  c.lr = 1e-3
  c.name = "x"
  c.flag = False
  c.model = ml_collections.ConfigDict({"num_layers": 2, "dims": (1, 2)})
  return c


def test_overrides_cast_to_existing_types():
  c = _cfg()
  for item in ["--config.total_steps=20", "config.lr=3", "name=12", "flag=true",
               "model.num_layers=4", "model.dims=(3,4,5)"]:
    apply_override(c, item)
  assert c.total_steps == 20 and c.lr == 3.0 and isinstance(c.lr, float)
  assert c.name == "12" and c.flag is True
  assert c.model.num_layers == 4 and c.model.dims == (3, 4, 5)


@pytest.mark.parametrize("item,message", [
    ("model.nope=1", "unknown config key: model.nope"),
    ("nope.x=1", "unknown config key: nope"),
    ("total_steps=abc", "config key total_steps expects an integer, got: abc"),
    ("flag=maybe", "config key flag expects true/false"),
    ("total_steps", "config override must look like"),
])
def test_override_errors_are_one_line(item, message):
  with pytest.raises(UserError, match=message) as e:
    apply_override(_cfg(), item)
  assert "\n" not in str(e.value)


def test_load_config_from_file(tmp_path):
  p = tmp_path / "c.py"
  p.write_text("import ml_collections\n"
               "def get_config(arg='a'):\n"
               "  return ml_collections.ConfigDict({'arg': arg, 'n': 1})\n")
  assert load_config(str(p), ["--config.n=5"]).to_dict() == {"arg": "a", "n": 5}
  assert load_config(f"{p}:b").arg == "b"
  with pytest.raises(UserError, match="config file not found"):
    load_config(str(tmp_path / "missing.py"))


def test_cli_help_lists_commands(capsys):
  with pytest.raises(SystemExit) as e:
    cli.main(["--help"])
  assert e.value.code == 0
  assert "vlgen" in capsys.readouterr().out


def test_a_run_saved_before_a_field_existed_loads_with_its_default(tmp_path, repo_root):
  """`checkpoint.load_config` fills fields added since a run was saved from
  its task's defaults, and keeps every field the run has."""
  import json
  from vlgen_jax.train import checkpoint
  config = load_config(str(repo_root / "configs" / "t2i_tiny.py"), ())
  saved = json.loads(config.to_json())
  del saved["evaluators"], saved["model"]["family"], saved["sample"]["decoding"]
  saved["sample"]["temperature"] = 0.25
  (tmp_path / "config.json").write_text(json.dumps(saved))
  loaded = checkpoint.load_config(str(tmp_path))
  assert loaded.evaluators == () and loaded.model.family == "encdec"
  assert loaded.sample.decoding == "ar"
  assert loaded.sample.temperature == 0.25 and loaded.model.d_model == 64
