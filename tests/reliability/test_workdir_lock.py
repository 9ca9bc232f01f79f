"""One writer per workdir (vlgen_jax/locks.py): a second `vlgen train` on a
workdir in use exits 2 at once naming the holder, and the first run is
unaffected; a lock left by a dead process is taken over."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from fault_helpers import RUN, Run, error_lines, last_logged, run, wait_for
from trainer_helpers import REPO_ROOT, TOY
from vlgen_jax import locks
from vlgen_jax.errors import UserError


def test_second_train_on_a_workdir_in_use_exits_2_naming_the_holder(tmp_path, env, reference):
  workdir = tmp_path / "run"
  # Each save held open for 3 s: the first run is surely still going when
  # the second one starts.
  first = Run(workdir, {**RUN, "debug.slow_save_seconds": 3}, env, tmp_path / "first.log")
  lock = workdir / locks.WORKDIR_LOCK
  wait_for(lock.exists, "the workdir lock", first)
  holder = json.loads(lock.read_text())
  assert holder["pid"] == first.proc.pid and holder["host"] == socket.gethostname()

  rc, out = run(workdir, RUN, env, name="second")
  assert first.running()  # the second run ended while the first was training
  assert rc == 2, out[-3000:]
  [line] = error_lines(out)
  assert line.startswith(f"error: workdir {workdir} is in use by pid {first.proc.pid} on "
                         f"{socket.gethostname()} since "), line
  # The holder's command (cut at 300 characters), then what to do.
  assert f" (vlgen train --config {TOY} --workdir {workdir} " in line, line
  assert line.endswith(f"); wait for that run to end or use another one (lock file {lock})"), line
  assert "Traceback" not in out and "training steps" not in out

  rc, out = first.wait()
  assert rc == 0, out[-3000:]
  assert last_logged(workdir) == last_logged(reference)  # the first run is unaffected
  assert not lock.exists()  # released at the end


def test_lock_of_a_killed_process_is_taken_over(tmp_path):
  path = tmp_path / "out.lock"
  code = ("import sys, time; from vlgen_jax import locks; "
          f"locks.FileLock({str(path)!r}, 'x').acquire(); print('held', flush=True); "
          "time.sleep(600)")
  holder = subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
  try:
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(UserError, match=f"output x is in use|x is in use by pid {holder.pid}"):
      locks.FileLock(path, "x").acquire()
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  # The lock file (naming the dead pid) is still there; the kernel released the lock.
  assert json.loads(path.read_text())["pid"] == holder.pid
  with locks.FileLock(path, "x"):
    assert json.loads(path.read_text())["pid"] == os.getpid()
  assert not path.exists()


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_text("x"), "error: --workdir {p} is a file, not a directory"),
    (None, "error: --workdir is empty; give a directory"),
])
def test_workdir_that_is_a_file_or_empty_is_one_line(tmp_path, env, make, message):
  path = tmp_path / "w"
  if make is not None:
    make(path)
  else:
    path = ""
  proc = subprocess.run([sys.executable, "-m", "vlgen_jax.cli", "train", "--config",
                         str(REPO_ROOT / "configs" / "toy.py"), "--workdir", str(path)],
                        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert proc.stderr.strip().splitlines() == [message.format(p=path)]
  assert sorted(os.listdir(tmp_path)) == (["w"] if make else [])  # nothing written
