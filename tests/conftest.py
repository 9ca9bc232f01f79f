"""Test setup: 8 forced CPU devices (set before jax is imported), TF off GPUs,
a compilation cache per test process, XLA optimizations off."""
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# A persistent compilation cache per test process (per xdist worker: jax
# writes entries non-atomically, so processes running at once never share
# one; its locked mode, which could share one, stats every entry on each
# write), inherited by the subprocesses its CLI tests start: the same tiny
# programs (VQ and t2i train steps, samplers) are compiled by many tests, and
# compiling is most of what a tiny test costs on a CPU.
# VLGEN_TEST_COMPILATION_CACHE=DIR keeps one across sessions instead.
if os.environ.get("VLGEN_TEST_COMPILATION_CACHE"):
  os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ["VLGEN_TEST_COMPILATION_CACHE"]
else:
  import atexit  # noqa: E402
  import shutil  # noqa: E402
  import tempfile  # noqa: E402
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="vlgen-test-jax-cache-")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# XLA's expensive backend passes buy run time the tiny test programs do not
# need and cost most of their compile time (a decode test: 1.8x faster end to
# end without them, measured alternately). Numbers are compared within one
# setting, so behaviour is what is tested; JAX_DISABLE_MOST_OPTIMIZATIONS=0
# runs the suite as users compile.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
# Without those passes, XLA:CPU's MLIR fusion emitters are most of what is
# left: the tiny demo's t2i train step compiles in 4.5-5.0 s with the classic
# LLVM emitters vs 11-12.4 s with them, and the whole tiny demo takes 86 s vs
# 126 s (measured alternately). With optimizations on, the classic emitters
# are slower (88 s vs 20 s for that train step), so only this setting uses them.
if os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] == "1":
  os.environ["XLA_FLAGS"] += " --xla_cpu_use_fusion_emitters=false"

import pathlib  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
  return REPO_ROOT


@pytest.fixture(scope="session")
def shapes_data_dir(tmp_path_factory) -> pathlib.Path:
  """TFDS data dir holding a tiny `shapes` dataset, built once per session (~0.5 s).

  Config: resolution 64, train 512, validation 64, heldout 64 examples, as
  ArrayRecord (config name `res64_train512_val64_heldout64`). Get its builder
  without rebuilding via
  `tfds_builder.prepare_shapes(shapes_data_dir, 64, 512, 64, 64)`, or read a
  split with `builder.as_data_source("train")`. Treat it as read-only.
  """
  from vlgen_jax.shapes import tfds_builder
  data_dir = tmp_path_factory.mktemp("shapes_data")
  tfds_builder.prepare_shapes(data_dir, resolution=64, train_size=512, validation_size=64,
                             heldout_size=64, progress=False)
  return data_dir


@pytest.fixture(scope="session")
def demo_tiny_dir(tmp_path_factory):
  """A finished `vlgen demo` workdir of the tiny recipe (configs/demo_tiny.py):
  32 px shapes (64 train images), tokenizer, 16-code VQ, token dataset, t2i
  run on 4x4 tokens, samples and eval. Nothing is trained to quality.

  Built once per test run: under pytest-xdist the workers share it (the
  first one to ask builds it under a file lock; the others then find every
  stage done). Treat it as read-only."""
  import fcntl
  from vlgen_jax import cli
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent  # the run's base temp, above each worker's own
  workdir = root / "demo_tiny"
  cwd = os.getcwd()
  with open(root / "demo_tiny.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    os.chdir(REPO_ROOT)
    try:
      assert cli.main(["demo", "--workdir", str(workdir), "--config",
                       "configs/demo_tiny.py"]) == 0
    finally:
      os.chdir(cwd)
  return workdir
