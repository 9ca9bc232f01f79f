"""Config mistakes are one `error:` line with exit status 2 and write nothing
(vlgen_jax/config.py, vlgen_jax/train/validation.py); a run's own config.json
is a config; each start's config is kept; a run whose every step was skipped
as non-finite fails instead of exporting untrained params."""
from __future__ import annotations

import json
import os

import pytest

from fault_helpers import RUN, error_lines, last_logged, run, run_ok
from trainer_helpers import TOY
from vlgen_jax import cli

PLAIN_DICT = "def get_config():\n  return {'task': 'toy', 'total_steps': 10}\n"


def _config_json(tmp_path, **edits):
  from vlgen_jax.config import load_config
  config = json.loads(load_config(TOY).to_json())
  config.update(edits)
  path = tmp_path / "edited.json"
  path.write_text(json.dumps(config))
  return str(path)


@pytest.mark.parametrize("args, message", [
    (["--config", ""], "--config is empty; give a config file (e.g. configs/toy.py) or a run's "
                       "config.json"),
    (["--config", "{tmp}"], "--config {tmp} is a directory; give a config file"),
    (["--config", f"{TOY}:foo"], f"config file {TOY} takes no argument; drop ':foo'"),
    (["--config", "{tmp}/plain.py"],
     "get_config() of {tmp}/plain.py returned a dict; it must return an ml_collections.ConfigDict "
     "(e.g. built on vlgen_jax.train.defaults.trainer_config())"),
    (["--config", "configs/t2i_tiny.py", "--config.model.image_grid=4"],
     "config key model.image_grid expects a sequence like (4, 4), got: 4"),
    (["--config", TOY, "--config.total_steps=1e20"],
     "config key total_steps is out of range (|value| < 2**63), got: 1e20"),
    (["--config", TOY, "--config.total_steps=1e12"],
     "config.total_steps must be <= 2147483647, got 1000000000000"),
    (["--config", TOY, "--config.optimizer.learning_rate=1e999"],
     "config.optimizer.learning_rate must be a finite number >= 0 (at most 3.4e+38), got inf"),
    (["--config", "{json_batch}"], "config.batch_size must be an integer, got '16'"),
    (["--config", "{json_missing}"], "config.nan_policy is missing; build configs on "
                                     "vlgen_jax.train.defaults.trainer_config()"),
    (["--config", "{tmp}/broken.json"], "config {tmp}/broken.json is not valid JSON "
                                        "(Expecting value: line 1 column 1 (char 0))"),
    (["--config", "{json_batch}:x"], "--config {json_batch} is a JSON config: it takes no ':x'"),
])
def test_config_mistake_is_one_line_and_writes_nothing(tmp_path, capsys, args, message):
  (tmp_path / "plain.py").write_text(PLAIN_DICT)
  (tmp_path / "broken.json").write_text("")
  missing = json.loads(open(_config_json(tmp_path)).read())
  del missing["nan_policy"]
  (tmp_path / "missing.json").write_text(json.dumps(missing))
  names = {"tmp": tmp_path, "json_missing": tmp_path / "missing.json",
           "json_batch": _config_json(tmp_path, batch_size="16")}
  workdir = tmp_path / "run"
  rc = cli.main(["train", "--workdir", str(workdir), *[a.format(**names) for a in args]])
  err = capsys.readouterr().err
  assert rc == 2, err
  assert err.strip().splitlines() == ["error: " + message.format(**names)]
  assert not workdir.exists()


def test_a_runs_config_json_is_its_config_and_each_start_is_recorded(tmp_path, env, reference):
  """Training from the reference run's config.json reproduces it; resuming
  with a changed config keeps config.json and adds to config_history/."""
  workdir = tmp_path / "run"
  config = str(reference / "config.json")
  out = run_ok(workdir, {}, env, config=config)
  assert last_logged(workdir) == last_logged(reference)
  first = (workdir / "config.json").read_text()
  assert json.loads(first) == json.loads((reference / "config.json").read_text())
  assert os.listdir(workdir / "config_history") == ["000-step0.json"]

  out = run_ok(workdir, {"log_every": 5}, env, config=config)
  assert "nothing to train" in out
  assert (f"config differs from the run's first one ({workdir}/config.json) in: log_every; "
          f"each start's config is in {workdir}/config_history/") in out
  assert (workdir / "config.json").read_text() == first
  assert sorted(os.listdir(workdir / "config_history")) == ["000-step0.json", "001-step30.json"]
  assert json.loads((workdir / "config_history" / "001-step30.json").read_text())["log_every"] == 5


def test_a_run_whose_every_step_was_skipped_fails_and_exports_nothing(tmp_path, env):
  workdir = tmp_path / "run"
  overrides = {**RUN, "total_steps": 2, "debug.nan_at_step": 1}
  rc, out = run(workdir, {**overrides, "total_steps": 1}, env)
  assert rc == 3, out[-3000:]
  assert error_lines(out) == [
      "error: every step (1..1) had a non-finite loss or gradients and was skipped: nothing was "
      f"trained and nothing exported to {workdir}/export; check the config (e.g. lower "
      "optimizer.learning_rate) and start a new --workdir"]
  assert "Traceback" not in out and "done:" not in out
  assert not (workdir / "export").exists()
  # Rerun: its checkpoint (step 1, skipped) is not exported either.
  rc, out = run(workdir, {**overrides, "total_steps": 1}, env)
  assert rc == 3 and not (workdir / "export").exists(), out[-3000:]
  # One good step after it is a trained run.
  rc, out = run(workdir, overrides, env)
  assert rc == 0 and (workdir / "export").exists(), out[-3000:]
