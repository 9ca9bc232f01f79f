"""What the machine does wrong, as one `error:` line (vlgen_jax/cli.py): a
full disk during training (Orbax's async writes fail in background threads)
and a read-only workdir. The disk fills through RLIMIT_FSIZE (writes past the
limit fail with EFBIG, as they fail with ENOSPC on a full disk: TensorStore
reports both the same way)."""
from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess

import pytest

from fault_helpers import RUN, error_lines, last_logged, run_ok
from trainer_helpers import REPO_ROOT, train_command
from vlgen_jax.train.checkpoint import storage_os_error


def _limit_file_size(limit):
  def preexec():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
  return preexec


def test_disk_full_during_a_checkpoint_save_is_one_line_and_resumes(tmp_path, env, reference):
  workdir = tmp_path / "run"
  overrides = {**RUN, "log_every": 10}  # metrics.jsonl stays small
  # config.json (~2.4 kB) fits; the first checkpoint's array file does not.
  proc = subprocess.run(train_command(workdir, overrides), env=env, cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=300,
                        preexec_fn=_limit_file_size(6000))
  out = proc.stdout + proc.stderr
  assert proc.returncode == 1, out[-4000:]
  assert "Traceback" not in out and "ERROR:" not in out, out[-4000:]
  [line] = error_lines(out)
  assert line.startswith(f"error: File too large: {workdir}/checkpoints/"), line
  assert "size limit" in line
  # Room again: the run resumes (from scratch: no save completed) and ends
  # with the reference's losses.
  out = run_ok(workdir, overrides, env)
  assert "ignoring partial checkpoint" in out
  assert last_logged(workdir) == {s: v for s, v in last_logged(reference).items() if s % 10 == 0}


def test_read_only_workdir_is_one_line(tmp_path, env):
  workdir = tmp_path / "ro"
  workdir.mkdir()
  workdir.chmod(0o555)
  command = train_command(workdir, RUN)
  if os.geteuid() == 0:  # root ignores permissions unless it drops that capability
    if shutil.which("setpriv") is None:
      pytest.skip("running as root without setpriv")
    command = ["setpriv", "--bounding-set=-dac_override,-dac_read_search",
               "--inh-caps=-dac_override,-dac_read_search", *command]
  proc = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert proc.stderr.strip().splitlines()[-1:] == [
      f"error: Permission denied: {workdir}/vlgen.lock (permission denied; choose a location "
      "you can write to)"]
  assert "Traceback" not in proc.stderr
  assert os.listdir(workdir) == []


@pytest.mark.parametrize("message, errno_, path", [
    ('OUT_OF_RANGE: Error writing "x" in OCDBT database at local file "/w/c/": Failed writing: '
     '"/w/c/d/abc": Failed to write 10 bytes to file 18: No space left on device '
     "[os_error_code='28']", 28, "/w/c/d/abc"),
    ("INVALID_ARGUMENT: shape mismatch", None, None),
])
def test_storage_os_error_reads_tensorstore_messages(message, errno_, path):
  error = storage_os_error(ValueError(message))
  assert (error and error.errno, error and error.filename) == (errno_, path)
