"""`vlgen`'s malloc setting (vlgen_jax/runtime.py): freed large blocks stay
mapped, so allocating the same buffer again does not fault its pages in anew."""
import os
import subprocess
import sys

import pytest

from vlgen_jax import runtime

# Allocates and frees a 48 MiB buffer 20 times, touching every page, and
# prints the minor page faults that took.
PROBE = """
import resource, sys
import numpy as np
from vlgen_jax import runtime
print(runtime.tune_malloc(), file=sys.stderr)
np.ones(6 << 20)  # the first allocation maps its pages in either way
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
  np.ones(6 << 20)  # 6M float64 = 48 MiB, above glibc's largest mmap threshold
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> tuple[int, str]:
  out = subprocess.run([sys.executable, "-c", PROBE], env={**os.environ, "VLGEN_MALLOC": mode},
                       capture_output=True, text=True, check=True)
  return int(out.stdout), out.stderr.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_heap_mode_keeps_freed_buffers_mapped():
  heap, heap_mode = _faults("heap")
  default, default_mode = _faults("default")
  assert (heap_mode, default_mode) == ("heap", "default")
  # 20 x 48 MiB re-faulted with the default setting (thousands of faults
  # even with transparent huge pages); with the heap setting, a few.
  assert default > 2000, default
  assert heap * 10 < default, (heap, default)


def test_unknown_mode_warns_and_leaves_malloc(capsys):
  assert runtime.tune_malloc({"VLGEN_MALLOC": "jemalloc"}) == "default"
  assert "VLGEN_MALLOC='jemalloc' is not one of heap, default" in capsys.readouterr().err
  assert runtime.tune_malloc({"VLGEN_MALLOC": "default"}) == "default"
