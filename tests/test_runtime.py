"""`vlgen`'s malloc settings (vlgen_jax/runtime.py): freed large blocks stay
mapped, so allocating the same buffer again does not fault its pages in anew,
also in a worker thread (where XLA:CPU allocates a step's temporaries)."""
import os
import subprocess
import sys

import pytest

from vlgen_jax import runtime

# Allocates and frees `count` live MiB-sized buffers 20 times in the main
# thread or in a new thread (its own malloc arena), touching every page, and
# prints the minor page faults that took.
PROBE = """
import resource, sys, threading
import numpy as np
from vlgen_jax import runtime
print(runtime.tune_malloc(), file=sys.stderr)
np._core.multiarray._set_madvise_hugepage(False)  # 4 KiB pages, like XLA's buffers
mib, count, in_thread = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "thread"
def run():
  [np.ones(mib << 17) for _ in range(count)]  # the first use maps pages in either way
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  for _ in range(20):
    [np.ones(mib << 17) for _ in range(count)]  # float64
  print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
if in_thread:
  t = threading.Thread(target=run); t.start(); t.join()
else:
  run()
"""


def _faults(mode: str, mib: int = 48, count: int = 1, where: str = "main") -> tuple[int, str]:
  out = subprocess.run([sys.executable, "-c", PROBE, str(mib), str(count), where],
                       env={**os.environ, "VLGEN_MALLOC": mode},
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


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_thread_heaps_stay_and_arena_mode_keeps_blocks_larger_than_a_heap():
  # Two live 48 MiB blocks in a thread: the second needs a second 64 MiB
  # heap of its arena, which glibc unmaps when it empties unless the top pad
  # is larger than a heap ("heap" sets it; without it this re-faulted 12k
  # pages per round).
  default, _ = _faults("default", 48, 2, "thread")
  heap, _ = _faults("heap", 48, 2, "thread")
  assert default > 2000 and heap * 10 < default, (heap, default)
  # 80 MiB in a thread: larger than any thread heap, so glibc mmaps it
  # whatever M_MMAP_MAX says; only the main arena ("arena") keeps it.
  heap, _ = _faults("heap", 80, 1, "thread")
  arena, mode = _faults("arena", 80, 1, "thread")
  assert mode == "arena"
  assert heap > 2000 and arena * 10 < heap, (arena, heap)


def test_unknown_mode_warns_and_leaves_malloc(capsys):
  assert runtime.tune_malloc({"VLGEN_MALLOC": "jemalloc"}) == "default"
  assert "VLGEN_MALLOC='jemalloc' is not one of heap, arena, default" in capsys.readouterr().err
  assert runtime.tune_malloc({"VLGEN_MALLOC": "default"}) == "default"
