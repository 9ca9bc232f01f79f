"""Fault-injection tests on real `vlgen train` subprocesses (docs/reliability.md).

Every test here is marked `reliability` (`pytest -m reliability` runs them on
their own). The subprocesses share one persistent XLA compilation cache, and
the trials share one uninterrupted reference run, so most runs only load a
cached executable.
"""
from __future__ import annotations

import pathlib

import pytest

from trainer_helpers import compile_cache_dir  # noqa: F401  (session fixture)
from fault_helpers import RUN, run_ok, subprocess_env


def pytest_collection_modifyitems(config, items):
  del config
  here = pathlib.Path(__file__).parent
  for item in items:  # all items of the session: mark only this folder's
    if here in item.path.parents:
      item.add_marker(pytest.mark.reliability)


@pytest.fixture(scope="session")
def env(compile_cache_dir):  # noqa: F811
  return subprocess_env(compile_cache_dir)


@pytest.fixture(scope="session")
def reference(tmp_path_factory, env):
  """`RUN` trained straight through: metrics, checkpoints 10/20/30 and the
  export. Read-only: tests copy it before changing anything."""
  workdir = tmp_path_factory.mktemp("reference")
  run_ok(workdir, RUN, env)
  return workdir
