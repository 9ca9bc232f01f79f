"""Metrics: metrics.jsonl / TensorBoard / console, eval loss, throughput and
MFU, data skip counts, and the non-finite step policy."""
from __future__ import annotations

import pathlib
import struct
import types

import jax
import numpy as np
import pytest

from trainer_helpers import (TOY,
                             override_args, read_metrics, toy_config)
from vlgen_jax import cli
from vlgen_jax.train import checkpoint as ckpt_lib
from vlgen_jax.train import metrics as metrics_lib
from vlgen_jax.tasks.toy import ToyTask, synthetic_sequences
from vlgen_jax.train.trainer import train


def tensorboard_events(workdir) -> list:
  """All Event protos of the run's TensorBoard files (TFRecord framing)."""
  from tensorboardX.proto.event_pb2 import Event
  events = []
  for path in sorted(pathlib.Path(workdir, "tensorboard").glob("events.out.tfevents.*")):
    data = path.read_bytes()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      events.append(Event.FromString(data[pos + 12:pos + 12 + length]))
      pos += 12 + length + 4
  return events


def tags(events) -> set[str]:
  return {v.tag for e in events for v in e.summary.value}


def test_peak_flops_table():
  assert metrics_lib.peak_flops(jax.devices()[0]) is None  # CPU: MFU is n/a
  kinds = {"TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5p": 459e12, "TPU v5": 459e12,
           "TPU v6 lite": 918e12, "NVIDIA A100-SXM4-80GB": 312e12,
           "NVIDIA H100 80GB HBM3": 989e12, "NVIDIA H100 PCIe": 756e12, "NVIDIA H200": 989e12}
  for kind, flops in kinds.items():
    device = types.SimpleNamespace(platform="gpu" if "NVIDIA" in kind else "tpu", device_kind=kind)
    assert metrics_lib.peak_flops(device) == flops, kind
  assert metrics_lib.peak_flops(types.SimpleNamespace(platform="gpu", device_kind="GTX 1080")) is None


def test_perf_metrics_numbers():
  out = metrics_lib.perf_metrics(steps=10, seconds=2.0, examples_per_step=64, tokens_per_example=256,
                                 flops_per_example=1e9, num_devices=4, peak=1e12)
  assert out["perf/step_time_s"] == pytest.approx(0.2)
  assert out["perf/examples_per_s_per_device"] == pytest.approx(64 / 0.2 / 4)
  assert out["perf/tokens_per_s_per_device"] == pytest.approx(64 * 256 / 0.2 / 4)
  assert out["perf/mfu"] == pytest.approx(1e9 * 320 / (4 * 1e12))
  assert metrics_lib.perf_metrics(steps=1, seconds=1.0, examples_per_step=1, tokens_per_example=1,
                                  flops_per_example=1.0, num_devices=1, peak=None)["perf/mfu"] is None


def test_run_writes_jsonl_tensorboard_eval_and_data_counts(tmp_path):
  config = toy_config(total_steps=4, log_every=2, eval_every=2, eval_steps=2, checkpoint_every=0)
  rows = {s: synthetic_sequences(np.arange(40), seed=s, split=0, vocab_size=32, length=9)
          for s in (1, 2)}
  train_rows = rows[1].copy()
  train_rows[[3, 7, 11], 0] = 99  # out-of-vocabulary ids: skipped and counted
  data_dir = tmp_path / "data"
  data_dir.mkdir()
  np.save(data_dir / "train.npy", train_rows)
  np.save(data_dir / "validation.npy", rows[2])
  config.data.dir = str(data_dir)
  workdir = tmp_path / "run"
  train(config, str(workdir), devices=jax.devices()[:1])

  lines = read_metrics(workdir)
  train_lines = [m for m in lines if "train/loss" in m]
  assert [m["step"] for m in train_lines] == [2, 4]
  for m in train_lines:
    for key in ("train/learning_rate", "train/grad_norm", "perf/step_time_s",
                "perf/examples_per_s_per_device", "perf/tokens_per_s_per_device"):
      assert np.isfinite(m[key]) and m[key] > 0, key
    assert 0.0 <= m["train/accuracy"] <= 1.0
    assert m["perf/mfu"] is None  # CPU
    assert m["data/train_skipped_out_of_range"] == 3
    assert m["train/skipped_steps"] == 0
  eval_lines = {m["step"]: m for m in lines if "eval/loss" in m}
  assert sorted(eval_lines) == [2, 4]

  # The logged eval loss is the mean loss over the first eval_steps batches of
  # the validation split, with the final params.
  task = ToyTask(config)
  params = ckpt_lib.load_params(str(workdir))
  losses = [task.loss(params, {}, {"tokens": rows[2][i * 16:(i + 1) * 16]}, jax.random.PRNGKey(0),
                      train=False)[0] for i in range(2)]
  assert eval_lines[4]["eval/loss"] == pytest.approx(float(np.mean(losses)), rel=1e-5)

  events = tensorboard_events(workdir)
  assert {"train/loss", "train/learning_rate", "eval/loss", "perf/step_time_s",
          "data/train_skipped_out_of_range"} <= tags(events)
  assert "perf/mfu" not in tags(events)  # unknown on CPU: not plotted as a number
  assert (workdir / "config.json").exists()


DIVERGE = {"optimizer.learning_rate": 1e30, "optimizer.grad_clip_norm": 0.0,
           "optimizer.schedule": "constant", "optimizer.warmup_steps": 0}


def test_nan_policy_skip_drops_nonfinite_updates(tmp_path):
  # lr 1e30 blows the params up after step 1; from step 2 on the gradients
  # are NaN and every update is dropped.
  config = toy_config({**DIVERGE, "total_steps": 4, "checkpoint_every": 1, "max_to_keep": 0,
                       "mesh.data": 8})
  state = train(config, str(tmp_path))
  lines = {m["step"]: m for m in read_metrics(tmp_path) if "train/loss" in m}
  assert lines[1]["train/nonfinite"] == 0.0
  assert [lines[s]["train/nonfinite"] for s in (2, 3, 4)] == [1.0, 1.0, 1.0]
  assert lines[4]["train/skipped_steps"] == 3 and int(state.skipped_steps) == 3
  assert int(state.step) == 4
  after_first = ckpt_lib.load_params(str(tmp_path), 1)
  jax.tree.map(np.testing.assert_array_equal, after_first, jax.device_get(state.params))
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(jax.device_get(state.params)))


def test_nan_policy_halt_stops_with_status_3(tmp_path, capsys):
  # The same compiled step as the skip test (the policy acts on the host).
  args = override_args({**DIVERGE, "total_steps": 4, "checkpoint_every": 1, "nan_policy": "halt",
                        "mesh.data": 8})
  rc = cli.main(["train", "--config", TOY, "--workdir", str(tmp_path), *args])
  err = capsys.readouterr().err.strip().splitlines()[-1]
  assert rc == 3
  assert err == ("error: non-finite loss or gradients in 1 step(s) up to step 2 (nan_policy=halt; "
                 "those updates were dropped); last checkpoint: 1")


def test_metrics_jsonl_drops_a_torn_last_line(tmp_path, capsys):
  """A run killed while writing a line: the next run's writer cuts the
  unfinished line, so every line stays one JSON object."""
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1, "train/loss": 2.5}\n{"step": 2, "train/lo')
  writer = metrics_lib.MetricWriter(str(tmp_path), enabled=True, total_steps=4, initial_step=1,
                                    progress=False)
  writer.write(2, {"train/loss": 2.25}, console=False)
  writer.close()
  assert read_metrics(tmp_path) == [{"step": 1, "train/loss": 2.5},
                                    {"step": 2, "train/loss": 2.25}]
  assert "dropped an unfinished last line" in capsys.readouterr().err
  # Complete files are left alone.
  metrics_lib.MetricWriter(str(tmp_path), enabled=True, total_steps=4, progress=False).close()
  assert len(read_metrics(tmp_path)) == 2


def test_writer_api_for_task_evaluate(tmp_path):
  writer = metrics_lib.MetricWriter(str(tmp_path), enabled=True, total_steps=10, progress=False)
  writer.scalar("eval/psnr", np.float32(31.5), 3)
  writer.image("eval/grid", np.zeros((4, 6, 3), np.uint8), 3)
  with pytest.raises(ValueError, match="HxWx3 uint8"):
    writer.image("eval/bad", np.zeros((4, 6), np.float32), 3)
  writer.write(3, {"eval/loss": 1.25})
  writer.close()
  assert read_metrics(tmp_path) == [{"step": 3, "eval/psnr": 31.5, "eval/loss": 1.25}]
  events = tensorboard_events(tmp_path)
  assert {"eval/psnr", "eval/grid", "eval/loss"} <= tags(events)
  assert any(v.HasField("image") for e in events for v in e.summary.value if v.tag == "eval/grid")
  # Non-primary processes write nothing.
  other = tmp_path / "other"
  other.mkdir()
  quiet = metrics_lib.MetricWriter(str(other), enabled=False, total_steps=10)
  quiet.scalar("x", 1.0, 1)
  quiet.write(1, {"y": 2.0})
  quiet.close()
  assert list(other.iterdir()) == []


def test_console_line_format():
  line = metrics_lib.format_line(7, {"perf/mfu": None, "train/grad_norm": 0.5, "train/loss": 2.0,
                                     "perf/step_time_s": 0.0125, "train/skipped_steps": 0.0})
  assert line == "step 7 | loss 2 | grad_norm 0.5 | 12.5 ms/step | mfu n/a"
