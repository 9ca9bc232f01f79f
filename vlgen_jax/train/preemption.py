"""SIGTERM/SIGINT -> "save a checkpoint at the end of this step, then stop".

Preemptible VMs and SLURM (`--signal=TERM@120`) send SIGTERM before killing a
job; Ctrl-C sends SIGINT. The handler only records the signal; the train loop
polls `requested` between steps. In multi-process runs every process must stop
at the same step, so `agree` all-gathers the flags (called only at steps where
the loop syncs anyway).
"""
from __future__ import annotations

import signal
import threading

import jax
import numpy as np


class StopSignals:
  """Context manager installing the handlers (main thread only)."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.received: int | None = None
    self._previous = {}

  def __enter__(self) -> "StopSignals":
    if threading.current_thread() is threading.main_thread():
      for sig in self.SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> bool:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}
    return False

  def _handle(self, signum, frame) -> None:
    del frame
    if self.received is None:
      self.received = signum

  @property
  def requested(self) -> bool:
    return self.received is not None

  def agree(self) -> bool:
    """True if any process received a stop signal (collective when multi-process)."""
    if jax.process_count() == 1:
      return self.requested
    from jax.experimental import multihost_utils
    flags = multihost_utils.process_allgather(np.asarray(self.received or 0, np.int32))
    signals = [int(s) for s in np.asarray(flags).reshape(-1) if s]
    if signals and self.received is None:
      self.received = signals[0]
    return bool(signals)
