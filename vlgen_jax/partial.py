"""Folder outputs that appear only when complete, and resume when interrupted.

`vlgen encode` and `vlgen sample` write into `<output>.partial/`, with a
progress file naming the options of the run and what is done. A rerun with
the same options resumes from it; other options discard it. `publish`
renames the partial folder to `<output>`; an existing output (replaced with
--overwrite) is moved to `<output>.old` first and deleted only once the new
one is in place. The caller holds the output's lock (vlgen_jax/locks.py).
"""
from __future__ import annotations

import json
import os
import shutil

from vlgen_jax import files
from vlgen_jax.errors import UserError

PARTIAL_SUFFIX = ".partial"
OLD_SUFFIX = ".old"
STOPPED = 143  # exit status after SIGTERM (128 + 15): rerun to resume


def check_output(output: str, overwrite: bool, flag: str = "--output") -> None:
  """`output` must be a folder path that holds nothing yet, unless `overwrite`."""
  if not output.strip():
    raise UserError(f"{flag} is empty; give a directory")
  if os.path.exists(output) and not os.path.isdir(output):
    raise UserError(f"{flag} {output} is a file, not a directory")
  if os.path.isdir(output) and os.listdir(output) and not overwrite:
    raise UserError(f"{flag} {output} already exists; add --overwrite to replace it (the old "
                    "one is kept until the new one is complete) or choose another directory")


class PartialOutput:
  """`<output>.partial` and its progress file: {"options": ..., "done": ...}."""

  def __init__(self, output: str, options: dict, progress_file: str):
    self.output = os.path.normpath(output)
    self.path = self.output + PARTIAL_SUFFIX
    self.options = options
    self._progress_path = os.path.join(self.path, progress_file)

  def read(self) -> dict | None:
    if not os.path.isfile(self._progress_path):
      return None
    try:
      with open(self._progress_path, encoding="utf-8") as f:
        progress = json.load(f)
    except ValueError:
      return None
    return progress if isinstance(progress, dict) else None

  def open(self, empty_done) -> dict:
    """The progress to resume from (same options), else a fresh partial folder."""
    old = self.output + OLD_SUFFIX
    if os.path.isdir(old) and not os.path.exists(self.output):
      os.rename(old, self.output)  # a publish cut short between its two renames
    progress = self.read()
    if progress is not None and progress.get("options") == self.options:
      return progress
    if os.path.exists(self.path):
      print(f"warning: discarding {self.path} (an interrupted run with other options)",
            flush=True)
      shutil.rmtree(self.path)
    progress = {"options": self.options, "done": empty_done}
    os.makedirs(self.path)
    self.save(progress)
    return progress

  def save(self, progress: dict) -> None:
    files.write_json(self._progress_path, progress, indent=1, sort_keys=True)

  def publish(self) -> None:
    os.remove(self._progress_path)
    old = self.output + OLD_SUFFIX
    if os.path.exists(old):
      shutil.rmtree(old)
    if os.path.exists(self.output):
      os.rename(self.output, old)
    os.rename(self.path, self.output)
    if os.path.exists(old):
      shutil.rmtree(old)
