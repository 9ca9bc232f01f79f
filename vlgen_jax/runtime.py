"""Process settings `vlgen` applies before any command runs.

glibc's malloc serves blocks above its mmap threshold (which it raises to at
most 32 MiB) with fresh anonymous mmaps and unmaps them on free, and trims
the heap top above its trim threshold. XLA:CPU allocates every step's
temporaries anew, so a CPU training step re-faults its large activation
buffers page by page: the quick start spent ~20% of its CPU time in the
kernel on ~137M minor page faults (issue 18). VLGEN_MALLOC=heap serves every
block from malloc's heaps and never trims them, so the pages stay mapped
between steps (the process keeps its peak heap until it exits). It is
opt-in: it helped on one CPU device but slowed processes with many XLA
threads (docs/training.md; benchmarks/cpu_allocator.py measures both).
"""
from __future__ import annotations

import ctypes
import os
import sys

# mallopt(3) parameters (glibc malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4

ENV_MALLOC = "VLGEN_MALLOC"
MODES = ("heap", "default")


def tune_malloc(environ=None) -> str:
  """Applies VLGEN_MALLOC (default "default") and returns the mode in effect:
  "heap" (no chunk mmaps, no trimming) or "default" (unchanged,
  also where the C library is not glibc)."""
  env = os.environ if environ is None else environ
  mode = env.get(ENV_MALLOC, "default") or "default"
  if mode not in MODES:
    print(f"warning: {ENV_MALLOC}={mode!r} is not one of {', '.join(MODES)}; "
          "leaving malloc as it is", file=sys.stderr)
    return "default"
  if mode == "default" or not sys.platform.startswith("linux"):
    return "default"
  try:
    mallopt = ctypes.CDLL(None).mallopt  # glibc; musl has no mallopt
  except (OSError, AttributeError):
    return "default"
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  # Per-thread arenas stay: one shared arena serialised XLA's threads (8
  # forced CPU devices: a sharded test step took 5x as long). mallopt
  # returns 1 on success.
  ok = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
  return "heap" if ok else "default"
