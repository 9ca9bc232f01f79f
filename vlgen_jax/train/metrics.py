"""Metric output: TensorBoard (tensorboardX), `WORKDIR/metrics.jsonl` (one JSON
object per logged step), console lines under a tqdm progress bar; plus
throughput and MFU from a table of accelerator peak FLOP/s.

Only process 0 writes; on other processes the writer is inert (no files).
"""
from __future__ import annotations

import json
import math
import os
import sys
from typing import Any, Mapping

import numpy as np

# Dense bf16 peak FLOP/s per device (chip for TPU, GPU for NVIDIA), matched
# against `device.device_kind` (lower-cased); more specific names first.
PEAK_BF16_FLOPS = (
    ("v6 lite", 918e12), ("v6e", 918e12),
    ("v5 lite", 197e12), ("v5e", 197e12), ("v5litepod", 197e12),
    ("v5p", 459e12), ("tpu v5", 459e12),
    ("tpu v4", 275e12),
    ("h200", 989e12),
    ("h100 pcie", 756e12), ("h100", 989e12),
    ("a100", 312e12),
)


def peak_flops(device) -> float | None:
  """Peak bf16 FLOP/s of `device`, None where unknown (CPU and others)."""
  if device.platform == "cpu":
    return None
  kind = str(getattr(device, "device_kind", "")).lower()
  for needle, flops in PEAK_BF16_FLOPS:
    if needle in kind:
      return flops
  return None


def perf_metrics(*, steps: int, seconds: float, examples_per_step: int, tokens_per_example: int,
                 flops_per_example: float, num_devices: int, peak: float | None) -> dict:
  """Step time, per-device throughput and MFU (None when the peak is unknown)."""
  step_time = seconds / max(steps, 1)
  examples_per_s = examples_per_step / step_time if step_time > 0 else 0.0
  mfu = None
  if peak and flops_per_example > 0 and step_time > 0:
    mfu = flops_per_example * examples_per_s / (num_devices * peak)
  return {
      "perf/step_time_s": step_time,
      "perf/examples_per_s_per_device": examples_per_s / num_devices,
      "perf/tokens_per_s_per_device": examples_per_s * tokens_per_example / num_devices,
      "perf/mfu": mfu,
  }


def _json_value(v: Any):
  if v is None:
    return None
  v = float(np.asarray(v))
  return v if math.isfinite(v) else str(v)  # "nan"/"inf" stay visible, JSON stays valid


class MetricWriter:
  """`write(step, scalars)` to all outputs; `scalar`/`image` for Task.evaluate."""

  def __init__(self, workdir: str, *, enabled: bool, total_steps: int, initial_step: int = 0,
               progress: bool = True):
    self.enabled = enabled
    self.workdir = str(workdir)
    self._pending: dict[str, Any] = {}
    self._tb = self._jsonl = self._bar = None
    if not enabled:
      return
    from tensorboardX import SummaryWriter  # Lazy: only process 0 needs it.
    from tqdm import tqdm
    self._tb = SummaryWriter(os.path.join(str(workdir), "tensorboard"))
    self._jsonl = _JsonLines(os.path.join(str(workdir), "metrics.jsonl"))
    # Bar and log lines share stderr so the lines print above the bar.
    self._bar = tqdm(total=total_steps, initial=initial_step, desc="train", unit="step",
                     file=sys.stderr,
                     disable=not progress, dynamic_ncols=True, mininterval=1.0)

  # ---- Task.evaluate's writer API -------------------------------------------
  def scalar(self, name: str, value, step: int) -> None:
    """One scalar to TensorBoard now; also joins the step's metrics.jsonl line."""
    if not self.enabled:
      return
    value = _json_value(value)
    if isinstance(value, float):
      self._tb.add_scalar(name, value, step)
    self._pending[name] = value

  def image(self, name: str, image, step: int) -> None:
    """An HxWx3 uint8 image to TensorBoard."""
    if not self.enabled:
      return
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
      raise ValueError(f"writer.image wants HxWx3 uint8, got {image.dtype} {image.shape}")
    self._tb.add_image(name, image, step, dataformats="HWC")

  # ---- trainer ---------------------------------------------------------------
  def write(self, step: int, scalars: Mapping[str, Any], console: bool = True) -> None:
    """Scalars (plus pending ones) to TensorBoard, metrics.jsonl and console."""
    if not self.enabled:
      return
    values = {k: _json_value(v) for k, v in scalars.items()}
    for k, v in values.items():
      if isinstance(v, float):
        self._tb.add_scalar(k, v, step)
    values = {**self._pending, **values}
    self._pending = {}
    self._jsonl.append(json.dumps({"step": step, **values}))
    self._tb.flush()
    if console:
      self._bar.write(format_line(step, values), file=sys.stderr)
    if "train/loss" in values:
      self._bar.set_postfix(loss=values["train/loss"], refresh=False)

  def advance(self, steps: int = 1) -> None:
    if self._bar is not None:
      self._bar.update(steps)

  def text(self, line: str) -> None:
    """A console line that does not break the progress bar (process 0 only)."""
    if self.enabled:
      self._bar.write(line, file=sys.stderr)

  def close(self) -> None:
    if not self.enabled:
      return
    self._bar.close()
    self._jsonl.close()
    self._tb.close()
    self.enabled = False


_QUIET_WHEN_ZERO = ("train/nonfinite", "train/skipped_steps")
_CONSOLE_SKIP = ("train/param_norm",)


class _JsonLines:
  """Appends lines to a file: in place on local disks; on object stores
  (gs://, which cannot append) by rewriting the whole (small) file."""

  def __init__(self, path: str):
    self.remote = "://" in path
    if self.remote:
      from etils import epath
      self.path = epath.Path(path)
      self.lines = self.path.read_text().splitlines() if self.path.exists() else []
    else:
      os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
      _drop_torn_line(path)
      self.file = open(path, "a")

  def append(self, line: str) -> None:
    if self.remote:
      self.lines.append(line)
      self.path.write_text("\n".join(self.lines) + "\n")
    else:
      self.file.write(line + "\n")
      self.file.flush()

  def close(self) -> None:
    if not self.remote:
      self.file.close()


def _drop_torn_line(path: str) -> None:
  """Cuts an unfinished last line (a run killed mid-write, a machine crash),
  so the file stays one JSON object per line when the next run appends."""
  if not os.path.exists(path) or os.path.getsize(path) == 0:
    return
  with open(path, "rb+") as f:
    f.seek(-1, os.SEEK_END)
    if f.read(1) == b"\n":
      return
    f.seek(0)
    data = f.read()
    keep = data.rfind(b"\n") + 1
    f.truncate(keep)
  print(f"warning: dropped an unfinished last line of {path} ({len(data) - keep} bytes)",
        file=sys.stderr)


def format_line(step: int, values: Mapping[str, Any]) -> str:
  """One readable console line for a logged step: loss first, perf last."""
  perf = ("perf/step_time_s", "perf/examples_per_s_per_device", "perf/tokens_per_s_per_device",
          "perf/mfu")

  def order(key):
    return (key != "train/loss", key in perf, perf.index(key) if key in perf else 0, key)

  parts = [f"step {step}"]
  for key in sorted(values, key=order):
    value = values[key]
    if key in _CONSOLE_SKIP or (key in _QUIET_WHEN_ZERO and not value):
      continue
    name = key.split("/", 1)[1] if key.startswith(("train/", "perf/")) else key
    if key == "perf/mfu":
      parts.append("mfu " + ("n/a" if value is None else f"{100 * value:.1f}%"))
    elif key == "perf/step_time_s" and isinstance(value, float):
      parts.append(f"{1000 * value:.1f} ms/step")
    elif key.startswith("perf/") and isinstance(value, float):
      parts.append(f"{name.replace('_per_s_per_device', '/s/device')} {value:.4g}")
    elif isinstance(value, float):
      parts.append(f"{name} {value:.4g}")
    elif value is not None:
      parts.append(f"{name} {value}")
  return " | ".join(parts)
