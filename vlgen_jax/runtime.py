"""Process settings `vlgen` applies before any command runs.

glibc's malloc serves blocks above its mmap threshold (which it raises to at
most 32 MiB) with fresh anonymous mmaps and unmaps them on free, and trims
the heap top above its trim threshold. XLA:CPU allocates every step's
temporaries anew, so a CPU training step re-faults its large activation
buffers page by page: the quick start spent ~20% of its CPU time in the
kernel on ~137M minor page faults (issue 18). Two more glibc rules apply to
the per-thread arenas XLA's worker threads allocate from: a heap of such an
arena that empties is unmapped whatever the trim threshold (unless the top
pad is larger than a heap), and a block larger than a heap (64 MiB) is
always a fresh mmap, whatever M_MMAP_MAX says. XLA:CPU's step temporaries
are one such block (74.6 MB for configs/t2i_shapes.py).

VLGEN_MALLOC=heap serves every block from malloc's heaps, never trims them
and keeps empty thread heaps (M_TOP_PAD), so the pages stay mapped between
steps (the process keeps its peak heap until it exits). VLGEN_MALLOC=arena
also routes every thread to the main heap (M_ARENA_MAX=1), so blocks above
64 MiB stay mapped too. Both are opt-in: one shared arena serialised XLA's
threads with 8 forced CPU devices (a sharded test step took 5x as long);
docs/training.md, benchmarks/cpu_allocator.py measures them.
"""
from __future__ import annotations

import ctypes
import os
import sys

# mallopt(3) parameters (glibc malloc.h).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
# Larger than a per-thread heap (glibc: 2 x the 32 MiB mmap threshold cap).
_TOP_PAD = 128 << 20

ENV_MALLOC = "VLGEN_MALLOC"
MODES = ("heap", "arena", "default")


def tune_malloc(environ=None) -> str:
  """Applies VLGEN_MALLOC (default "default") and returns the mode in effect:
  "heap" (no chunk mmaps, no trimming, empty thread heaps kept), "arena"
  (heap, and one arena for all threads) or "default" (unchanged, also where
  the C library is not glibc). Call it before any thread allocates: threads
  keep the arena they first used."""
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
  # mallopt returns 1 on success.
  options = [(_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1), (_M_TOP_PAD, _TOP_PAD)]
  if mode == "arena":
    options.append((_M_ARENA_MAX, 1))
  ok = all(mallopt(option, value) == 1 for option, value in options)
  return mode if ok else "default"
