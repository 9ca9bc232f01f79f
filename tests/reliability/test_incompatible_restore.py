"""Resuming a workdir with a config whose model shapes differ is one clear
error naming the first mismatched parameter path and both shapes, before
anything compiles, and leaves the workdir (its config.json included) as it was."""
from __future__ import annotations

import shutil

import pytest

from fault_helpers import RUN, config_json, error_lines, run, warning_lines
from trainer_helpers import TOY, override_args
from vlgen_jax import cli


def _snapshot(workdir):
  return sorted((str(p.relative_to(workdir)), p.stat().st_size)
                for p in workdir.rglob("*") if p.is_file())


def test_wider_mlp_names_the_first_mismatched_param_and_both_shapes(tmp_path, env, reference):
  workdir = tmp_path / "run"
  shutil.copytree(reference, workdir)
  before, config_before = _snapshot(workdir), config_json(workdir)

  rc, out = run(workdir, {**RUN, "model.mlp_dim": 64}, env)
  assert rc == 2, out[-4000:]
  assert error_lines(out) == [
      f"error: checkpoint step 30 in {workdir}/checkpoints does not match the config: "
      "params/block_0/mlp_in has shape (16, 32) in the checkpoint but (16, 64) in the config "
      "(and 5 more); resume with the run's own config "
      f"({workdir}/config.json) or start a new --workdir"]
  assert "Traceback" not in out and not warning_lines(out)
  assert "training steps" not in out  # stopped before the loop (and before compiling it)
  assert _snapshot(workdir) == before
  assert config_json(workdir) == config_before


# In-process (nothing compiles before the check): other ways a config can
# stop matching its checkpoints.
@pytest.mark.parametrize("overrides, message", [
    ({"model.num_layers": 2},
     "params/block_1/attention_norm/scale (float32 (16,)) is in the config but not in the "
     "checkpoint (and 23 more)"),
    ({"model.vocab_size": 48},
     "params/embedding has shape (32, 16) in the checkpoint but (48, 16) in the config"),
    ({"optimizer.name": "sgd"},
     "opt_state/1/1/0/trace/block_0/attention_norm/scale (float32 (16,)) is in the config but "
     "not in the checkpoint"),
])
def test_other_mismatches_are_one_line(tmp_path, capsys, reference, overrides, message):
  workdir = tmp_path / "run"
  shutil.copytree(reference, workdir)
  before = _snapshot(workdir)
  rc = cli.main(["train", "--config", TOY, "--workdir", str(workdir),
                 *override_args({**RUN, **overrides})])
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 2
  assert len(err) == 1 and err[0].startswith(
      f"error: checkpoint step 30 in {workdir}/checkpoints does not match the config: ")
  assert message in err[0]
  assert _snapshot(workdir) == before
