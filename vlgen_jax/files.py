"""Atomic file writes: a reader, or a rerun after an interrupt, finds the old
file or the new one, never part of one.

The new content goes to a temporary file in the same folder (named with the
process id, so two processes writing the same path do not share it) and is
moved over the target with `os.replace`, which is atomic on POSIX and
Windows within one filesystem.
"""
from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = "") -> Iterator[str]:
  """Yields a temporary path to write; on success it replaces `path`, on an
  exception it is removed and `path` is left as it was. `suffix` keeps an
  extension for writers that infer the format from it (np.savez adds .npz)."""
  tmp = f"{path}.tmp-{os.getpid()}{suffix}"
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_text(path: str, text: str) -> None:
  with atomic_path(path) as tmp:
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(text)


def write_json(path: str, obj: Any, **dump_kwargs) -> None:
  """`json.dump(obj, **dump_kwargs)` into `path`, atomically (indent 2 unless given)."""
  dump_kwargs.setdefault("indent", 2)
  write_text(path, json.dumps(obj, **dump_kwargs))
