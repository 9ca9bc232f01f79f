"""One writer per output: an advisory lock file for workdirs and output folders.

`vlgen train` locks `WORKDIR/vlgen.lock`; `vlgen encode` and `vlgen sample`
lock `<output>.lock` next to their output. The lock is `fcntl.flock` on that
file, which holds the holder's host, pid and command as JSON. The kernel drops
the lock when its process dies (even on SIGKILL), so a lock file left by a dead
process is simply taken over. A second writer fails at once with one line
naming the holder (UserError, exit 2).

Filesystems without flock (some FUSE mounts, e.g. gcsfuse) raise ENOLCK or
EOPNOTSUPP; there the holder is read from the file instead: a holder on this
host whose pid is gone is stale and taken over, any other holder is an error
(delete the file if you know that run is over). On NFS, Linux maps flock to
NFS byte-range locks, which work across hosts.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time

from vlgen_jax.errors import UserError

WORKDIR_LOCK = "vlgen.lock"
_NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # alive, another user's
    return True
  return True


def _read_holder(path: str) -> dict:
  try:
    with open(path, encoding="utf-8") as f:
      holder = json.loads(f.read() or "{}")
    return holder if isinstance(holder, dict) else {}
  except (OSError, ValueError):
    return {}


def describe_holder(holder: dict) -> str:
  if not holder:
    return "another process"
  since = holder.get("since")
  when = time.strftime(" since %Y-%m-%d %H:%M:%S UTC", time.gmtime(since)) if since else ""
  return f"pid {holder.get('pid')} on {holder.get('host')}{when} ({holder.get('command', '?')})"


class FileLock:
  """`with FileLock(path, what):` holds the lock on `path` (created, with its
  parent folder) for the block. `what` names the locked thing in the error."""

  def __init__(self, path, what: str):
    self.path = os.fspath(path)
    self.what = what
    self._fd = None

  def acquire(self) -> "FileLock":
    parent = os.path.dirname(os.path.abspath(self.path))
    self._created = None if os.path.isdir(parent) else parent
    os.makedirs(parent, exist_ok=True)
    while True:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
          raise UserError(self._busy(_read_holder(self.path))) from None
        if e.errno not in _NO_FLOCK:
          raise
        fd = self._acquire_without_flock()
      # A releasing holder unlinks the file: if ours is no longer the file at
      # `path`, someone else may create and lock a new one; start over.
      try:
        same = os.path.samestat(os.fstat(fd), os.stat(self.path))
      except FileNotFoundError:
        same = False
      if same:
        break
      os.close(fd)
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time(),
              "command": " ".join(["vlgen", *sys.argv[1:]])[:300]}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(holder).encode(), 0)
    self._fd = fd
    return self

  def _acquire_without_flock(self) -> int:
    holder = _read_holder(self.path)
    if holder and holder.get("pid") != os.getpid():
      same_host = holder.get("host") == socket.gethostname()
      if not same_host or _pid_alive(int(holder.get("pid", 0))):
        raise UserError(self._busy(holder) + " (this filesystem has no file locks: if that run "
                        f"is over, delete {self.path})")
    return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)

  def _busy(self, holder: dict) -> str:
    return (f"{self.what} is in use by {describe_holder(holder)}; wait for that run to end or "
            f"use another one (lock file {self.path})")

  def release(self) -> None:
    if self._fd is None:
      return
    try:
      os.unlink(self.path)  # before unlocking: see acquire
    except FileNotFoundError:
      pass
    os.close(self._fd)  # drops the flock
    self._fd = None
    if self._created:  # a run that stopped before writing anything leaves no folder
      try:
        os.rmdir(self._created)
      except OSError:
        pass

  def __enter__(self) -> "FileLock":
    return self.acquire()

  def __exit__(self, *exc) -> bool:
    self.release()
    return False


def workdir_lock(workdir):
  """The lock of a workdir; none for object stores (gs://...), which have no
  file locks (one writer per bucket path is then up to the job scheduler)."""
  if "://" in os.fspath(workdir):
    return contextlib.nullcontext()
  return FileLock(os.path.join(os.fspath(workdir), WORKDIR_LOCK), f"workdir {workdir}")


def output_lock(output):
  """The lock of an output written to a temporary sibling and renamed."""
  if "://" in os.fspath(output):
    return contextlib.nullcontext()
  output = os.path.normpath(os.fspath(output))
  return FileLock(output + ".lock", f"output {output}")


def check_dir_arg(path, flag: str) -> None:
  """A directory argument that is empty or names a file is a UserError (an
  empty one would silently mean the current directory)."""
  path = os.fspath(path)
  if not path.strip():
    raise UserError(f"{flag} is empty; give a directory")
  if os.path.exists(path) and not os.path.isdir(path):
    raise UserError(f"{flag} {path} is a file, not a directory")
