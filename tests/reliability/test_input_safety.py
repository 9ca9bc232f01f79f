"""Input safety: nothing `vlgen` loads can run code. No pickle (or other
code-carrying formats), `eval` or `exec` anywhere in the package (the config
loader's documented `exec_module` of the config file the user chose is the one
exception); numeric CLI options are validated; prompts and caption files are
data, never paths to run or to escape to; `--config.k=v` values are literals."""
from __future__ import annotations

import ast
import pathlib
import stat

import pytest

from trainer_helpers import REPO_ROOT
from vlgen_jax import cli
from vlgen_jax.config import apply_override, load_config

PACKAGE = REPO_ROOT / "vlgen_jax"

# Modules whose loading runs code embedded in the data.
CODE_FORMATS = {"pickle", "_pickle", "cPickle", "cloudpickle", "dill", "shelve", "marshal",
                "joblib", "pickletools"}
CODE_BUILTINS = {"eval", "exec", "compile", "execfile", "__import__"}
CODE_LOADERS = {"read_pickle", "unsafe_load", "full_load"}  # pandas, PyYAML
NUMPY_LOADS = {"np.load", "numpy.load", "jnp.load", "onp.load"}
# The one place code is run on purpose: the config file the user names on the
# command line (vlgen_jax/config.py documents it).
ALLOWED = {("vlgen_jax/config.py", "exec_module")}


def _name(node: ast.AST) -> str:
  if isinstance(node, ast.Name):
    return node.id
  if isinstance(node, ast.Attribute):
    return f"{_name(node.value)}.{node.attr}"
  return ""


def code_execution_sites(source: str, filename: str) -> list[str]:
  """`file:line: what` for every construct that can run code from data."""
  found = []

  def hit(node, what):
    if (filename, what.split(" ")[0]) not in ALLOWED:
      found.append(f"{filename}:{node.lineno}: {what}")

  for node in ast.walk(ast.parse(source, filename)):
    if isinstance(node, ast.Import):
      for alias in node.names:
        if alias.name.split(".")[0] in CODE_FORMATS:
          hit(node, f"import {alias.name}")
    elif isinstance(node, ast.ImportFrom):
      if (node.module or "").split(".")[0] in CODE_FORMATS:
        hit(node, f"from {node.module} import")
    elif isinstance(node, ast.Call):
      name = _name(node.func)
      last = name.rsplit(".", 1)[-1]
      keywords = {k.arg: k.value for k in node.keywords}
      if isinstance(node.func, ast.Name) and name in CODE_BUILTINS:
        hit(node, f"{name}(")
      elif last == "exec_module":
        hit(node, "exec_module")
      elif last in CODE_LOADERS or name in ("yaml.load", "torch.load"):
        hit(node, f"{name}(")
      elif name in NUMPY_LOADS:
        flag = keywords.get("allow_pickle")
        if not (isinstance(flag, ast.Constant) and flag.value is False):
          hit(node, f"{name}( without allow_pickle=False")
      elif name in ("os.system", "os.popen") or (
          isinstance(keywords.get("shell"), ast.Constant) and keywords["shell"].value is True):
        hit(node, f"{name}( through a shell")
  return found


def _package_sources():
  for path in sorted(PACKAGE.rglob("*.py")):
    yield str(path.relative_to(REPO_ROOT)), path.read_text()


def test_no_code_execution_on_any_load_path():
  found = [site for name, src in _package_sources() for site in code_execution_sites(src, name)]
  assert not found, "code-executing constructs in vlgen_jax:\n" + "\n".join(found)
  # The allowed one is really there (the scan sees it) and documented.
  config_src = (PACKAGE / "config.py").read_text()
  assert "exec_module" in config_src and "code the user chose" in config_src


@pytest.mark.parametrize("snippet", [
    "import pickle", "import dill as d", "from pickle import loads", "import marshal",
    "x = eval(s)", "exec(code)", "__import__(name)", "c = compile(s, 'f', 'exec')",
    "a = np.load(path)", "a = np.load(path, allow_pickle=True)", "yaml.load(f)",
    "df = pd.read_pickle(p)", "spec.loader.exec_module(m)", "os.system(cmd)",
    "subprocess.run(cmd, shell=True)",
])
def test_the_scan_finds_each_construct(snippet):
  assert code_execution_sites(snippet, "vlgen_jax/x.py"), snippet


def test_the_scan_passes_safe_lookalikes():
  safe = ("a = np.load(p, allow_pickle=False)\nre.compile('x')\nmodel.eval_shape(f)\n"
          "ast.literal_eval(s)\njax.eval_shape(f, x)\nsubprocess.run(['ls'])\n")
  assert code_execution_sites(safe, "vlgen_jax/x.py") == []


def test_setstate_methods_are_not_load_paths():
  """`__setstate__` is only reachable through pickle, which nothing in the
  package loads (the scan above): these exist so Grain may copy a tokenizer
  or tar source into its worker processes, and rebuild from plain fields."""
  defined = sorted(name for name, src in _package_sources()
                   for node in ast.walk(ast.parse(src))
                   if isinstance(node, ast.FunctionDef) and node.name == "__setstate__")
  assert defined == ["vlgen_jax/data/sources.py", "vlgen_jax/text/tokenizer.py"]


# ---- command-line numbers ----------------------------------------------------

BAD_NUMBERS = [
    (["text-tokenizer", "--text-file", "{tmp}/p.txt", "--output", "{tmp}/t.model",
      "--vocab-size", "-5"], "--vocab-size"),
    (["text-tokenizer", "--text-file", "{tmp}/p.txt", "--output", "{tmp}/t.model",
      "--vocab-size", "100", "--max-sentences", "0"], "--max-sentences"),
    (["data", "shapes", "--data-dir", "{tmp}/d", "--train-size", "-1"], "--train-size"),
    (["sample", "--workdir", "{tmp}/run", "--prompt", "a", "--outdir", "{tmp}/o",
      "--num-per-prompt", "0"], "--num-per-prompt"),
    (["sample", "--workdir", "{tmp}/run", "--prompt", "a", "--outdir", "{tmp}/o",
      "--batch-size", "-2"], "--batch-size"),
    (["sample", "--workdir", "{tmp}/run", "--prompt", "a", "--outdir", "{tmp}/o",
      "--temperature", "-1"], "temperature"),
    (["sample", "--workdir", "{tmp}/run", "--prompt", "a", "--outdir", "{tmp}/o",
      "--top-p", "1.5"], "top-p"),
    (["sample", "--workdir", "{tmp}/run", "--prompt", "a", "--outdir", "{tmp}/o",
      "--top-k", "-3"], "top-k"),
    (["sample", "--workdir", "{tmp}/run", "--prompt", "a", "--outdir", "{tmp}/o",
      "--cfg-scale", "nan"], "cfg scale"),
    (["eval", "--workdir", "{tmp}/run", "--num", "0"], "--num"),
    (["eval", "--workdir", "{tmp}/run", "--batch-size", "0"], "--batch-size"),
    (["encode", "--workdir", "{tmp}/run", "--output", "{tmp}/e", "--threads", "-1"],
     "--threads"),
    (["model-info", "--config", "configs/t2i_tiny.py", "--devices", "0"], "--devices"),
    (["encode", "--workdir", "{tmp}/run", "--output", "{tmp}/e", "--batch-size", "0"],
     "--batch-size"),
    (["encode", "--workdir", "{tmp}/run", "--output", "{tmp}/e", "--num-shards", "0"],
     "--num-shards"),
    (["train", "--config", "configs/toy.py", "--workdir", "{tmp}/w",
      "--config.total_steps=-4"], "config.total_steps"),
    (["train", "--config", "configs/toy.py", "--workdir", "{tmp}/w",
      "--config.batch_size=1.5"], "batch_size"),
    (["train", "--config", "configs/toy.py", "--workdir", "{tmp}/w",
      "--config.debug.slow_save_seconds=-1"], "config.debug.slow_save_seconds"),
]


@pytest.fixture(scope="module")
def cli_inputs(tmp_path_factory):
  """A prompts/text file and a t2i workdir with only its config.json (enough
  for every command to reach its number checks without loading a model)."""
  tmp = tmp_path_factory.mktemp("cli")
  (tmp / "p.txt").write_text("a red circle\n")
  (tmp / "run").mkdir()
  (tmp / "run" / "config.json").write_text(load_config("configs/t2i_tiny.py").to_json())
  return tmp


@pytest.mark.parametrize("argv, names", BAD_NUMBERS, ids=lambda v: " ".join(v)
                         if isinstance(v, list) else None)
def test_bad_numeric_options_are_one_line_errors(argv, names, cli_inputs, capsys):
  argv = [a.replace("{tmp}", str(cli_inputs)) for a in argv]
  rc = cli.main(argv)
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 2, err
  assert len(err) == 1 and err[0].startswith("error: ") and names in err[0], err


def test_non_numbers_are_rejected_by_the_parser(cli_inputs, capsys):
  with pytest.raises(SystemExit) as e:
    cli.main(["sample", "--workdir", str(cli_inputs / "run"), "--prompt", "a", "--outdir",
              str(cli_inputs / "o"), "--batch-size", "16; rm -rf /"])
  assert e.value.code == 2
  assert "invalid int value" in capsys.readouterr().err


# ---- files of text are text ------------------------------------------------------

def _trap(tmp_path) -> tuple[pathlib.Path, pathlib.Path]:
  """An executable script that, if anything ran it, would create `marker`."""
  marker, script = tmp_path / "ran", tmp_path / "trap.sh"
  script.write_text(f"#!/bin/sh\ntouch {marker}\n")
  script.chmod(script.stat().st_mode | stat.S_IXUSR)
  return script, marker


def test_prompt_lines_are_captions_not_commands_or_paths(tmp_path):
  from vlgen_jax.sample.streaming import prompt_source
  script, marker = _trap(tmp_path)
  lines = [str(script), f"$({script})", f"`{script}`", f"a red circle; {script}",
           f"__import__('os').system('touch {marker}')", "../../etc/passwd",
           "file:///etc/passwd"]
  prompts = tmp_path / "prompts.txt"
  prompts.write_text("\n".join(lines) + "\n")
  source = prompt_source(str(prompts), None)
  assert source.count == len(lines) and list(source.open()) == lines
  assert not marker.exists()


def test_caption_file_names_cannot_leave_their_folder(tmp_path):
  from vlgen_jax.errors import UserError
  from vlgen_jax.eval.report import read_image_folder
  script, marker = _trap(tmp_path)
  images = tmp_path / "images"
  images.mkdir()
  for name in (f"../{script.name}", str(script), "sub/../../trap.sh"):
    (images / "captions.tsv").write_text(f"{name}\ta red circle\n")
    with pytest.raises(UserError, match="image not found"):
      read_image_folder(str(images))
  assert not marker.exists()


def test_config_override_values_are_literals_never_code(tmp_path):
  marker = tmp_path / "ran"
  config = load_config("configs/toy.py")
  code = f"__import__('os').system('touch {marker}')"
  apply_override(config, f"--config.train_split={code}")
  assert config.train_split == code  # a string field keeps the text as is
  from vlgen_jax.errors import UserError
  with pytest.raises(UserError, match="expects an integer"):
    apply_override(config, f"--config.total_steps={code}")
  with pytest.raises(UserError, match="expects an integer"):
    apply_override(config, "--config.total_steps=(lambda: 1)()")
  apply_override(config, "--config.mesh={'data': 2, 'fsdp': 2, 'tensor': 2}")
  assert dict(config.mesh) == {"data": 2, "fsdp": 2, "tensor": 2}
  assert not marker.exists()

