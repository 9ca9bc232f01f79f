"""Tokenizer through the trainer, the encode/decode API, sharded encode, and
`vlgen encode` -> token dataset -> stage-2 input pipeline round trip."""
import json
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from vlgen_jax import cli
from vlgen_jax.config import load_config
from vlgen_jax.data import pipeline
from vlgen_jax.shapes import scenes
from vlgen_jax.data.token_records import TokenRecordSource, read_code_appearance
from vlgen_jax.errors import UserError
from vlgen_jax.text.tokenizer import TextTokenizer
from vlgen_jax.train import checkpoint
from vlgen_jax.vq import encode as encode_lib
from vlgen_jax.tasks import vq_eval as evaluation
from vlgen_jax.vq.api import VQTokenizer
from vlgen_jax.tasks.vq import VQTask
from trainer_helpers import REPO_ROOT, compile_cache_dir, subprocess_env  # noqa: F401

DATA_NAME = "shapes/res64_train512_val64_heldout64"
TINY = {
    "model.ch": 16, "model.ch_mult": (1, 2), "model.patch_size": 4, "model.num_res_blocks": 0,
    "model.num_mid_blocks": 1, "model.z_channels": 16, "model.num_codes": 32,
    "model.code_dim": 4, "model.encoder_kernel": 1,
    "batch_size": 8, "total_steps": 4, "log_every": 2, "eval_every": 4, "eval_steps": 1,
    "checkpoint_every": 4, "vq_eval.num_examples": 16, "vq_eval.batch_size": 8,
    "vq_eval.grid_examples": 3, "data.name": DATA_NAME, "data.prefetch": 0,
    "codebook.num_recent": 64, "codebook.dead_after": 2,
    # The GAN (own optimizer, switched on at step 2) rides along in the same run.
    "loss.gan.enabled": True, "loss.gan.start_step": 2, "loss.gan.ch": 8,
    "loss.gan.num_layers": 1,
}


def _config(data_dir, **extra):
  items = {**TINY, "data.data_dir": str(data_dir), **extra}
  return load_config("configs/vq_shapes.py",
                     [f"--config.{k}={v!r}" if isinstance(v, tuple) else
                      f"--config.{k}={v}" for k, v in items.items()])


@pytest.fixture(scope="module")
def vq_workdir(shapes_data_dir, tmp_path_factory):
  from vlgen_jax.train.trainer import train
  workdir = tmp_path_factory.mktemp("vq_run")
  train(_config(shapes_data_dir), str(workdir))
  return workdir


def _images(split, n):
  return np.stack([scenes.render(scenes.sample_scene(split, i)) for i in range(n)])


def test_trainer_logs_codebook_health_and_eval(vq_workdir):
  lines = [json.loads(l) for l in (vq_workdir / "metrics.jsonl").read_text().splitlines()]
  train_keys = set().union(*(l.keys() for l in lines if "train/loss" in l))
  assert {"train/psnr", "train/codebook_usage", "train/perplexity", "train/codebook_restarts",
          "train/recon_loss", "train/commit_loss", "train/g_loss", "train/d_loss",
          "train/learning_rate/generator", "train/learning_rate/discriminator"} <= train_keys
  by_step = {l["step"]: l for l in lines if "train/loss" in l}
  # Two optimizers with their own learning rates; the GAN is on from step 2.
  lr = {k: by_step[2][f"train/learning_rate/{k}"] for k in ("generator", "discriminator")}
  assert lr["discriminator"] < lr["generator"]
  assert by_step[4]["train/gan_weight"] > 0
  final = [l for l in lines if "val/psnr" in l][-1]
  assert final["step"] == 4 and final["val/examples"] == 16
  assert 0 < final["val/codebook_usage"] <= 1 and 0 <= final["val/fidelity"] <= 1
  assert np.isfinite(final["val/psnr"]) and np.isfinite(final["eval/loss"])
  assert (vq_workdir / "export" / "params").is_dir()
  assert any((vq_workdir / "tensorboard").iterdir())


def test_encode_decode_deterministic_and_match_forward(vq_workdir):
  tok = VQTokenizer.from_workdir(str(vq_workdir))
  assert tok.token_grid == (8, 8) and tok.num_codes == 32
  images = _images("validation", 8)
  tokens = tok.encode(images)
  assert tokens.shape == (8, 8, 8) and tokens.dtype == np.int32
  np.testing.assert_array_equal(tok.encode(images), tokens)
  np.testing.assert_array_equal(tok.encode(images.astype(np.float32) / 127.5 - 1), tokens)
  decoded = tok.decode(tokens)
  np.testing.assert_array_equal(tok.decode(tokens), decoded)
  np.testing.assert_array_equal(tok.decode(tokens.reshape(8, 64)), decoded)

  # The model's own forward pass (straight-through codes -> decoder) agrees.
  task = VQTask(checkpoint.load_config(str(vq_workdir)))
  params = checkpoint.load_params(str(vq_workdir))
  x = images.astype(np.float32) / 127.5 - 1
  x_rec, indices, _, _ = jax.jit(task.forward)(params["vq"], x)
  np.testing.assert_array_equal(indices, tokens)
  np.testing.assert_allclose(decoded, x_rec, atol=1e-5)

  with pytest.raises(UserError, match=r"token ids must be in \[0, 32\)"):
    tok.decode(np.full((1, 8, 8), 32))
  with pytest.raises(UserError, match="encode expects images of shape"):
    tok.encode(np.zeros((1, 32, 32, 3), np.uint8))


def test_sharded_encode_equals_single_device(vq_workdir):
  assert jax.device_count() == 8
  images = _images("validation", 13)  # not a multiple of 8: padded, then cut
  tok8 = VQTokenizer.from_workdir(str(vq_workdir))
  tok1 = VQTokenizer.from_workdir(str(vq_workdir), devices=jax.devices()[:1])
  assert tok8.mesh.devices.size == 8 and tok1.mesh.devices.size == 1
  tokens8 = tok8.encode(images)
  np.testing.assert_array_equal(tokens8, tok1.encode(images))
  np.testing.assert_allclose(tok8.decode(tokens8), tok1.decode(tokens8), atol=1e-6)


def test_encode_cli_round_trips_through_stage2_pipeline(vq_workdir, shapes_data_dir, tmp_path):
  out = tmp_path / "tokens"
  rc = cli.main(["encode", "--workdir", str(vq_workdir), "--output", str(out),
                 "--splits", "train[:40],validation", "--batch-size", "16", "--num-shards", "2"])
  assert rc == 0
  info = json.loads((out / "dataset_info.json").read_text())
  assert info["meta"]["token_grid"] == [8, 8] and info["meta"]["codebook_size"] == 32
  assert info["splits"]["train"]["num_records"] == 40
  assert info["splits"]["validation"]["num_records"] == 64

  tok = VQTokenizer.from_workdir(str(vq_workdir))
  expect_tokens = tok.encode(_images("validation", 64)).reshape(64, -1)
  expect_captions = [scenes.sample_scene("validation", i).caption for i in range(64)]
  by_caption = {}
  for tokens, caption in zip(expect_tokens, expect_captions):
    by_caption.setdefault(caption, []).append(tokens)
  stored = list(TokenRecordSource(str(out), "validation"))
  assert sorted(c for _, c in stored) == sorted(expect_captions)
  for tokens, caption in stored:
    assert any(np.array_equal(tokens, t) for t in by_caption[caption])

  # What each code looks like: the mean [0, 1] patch of the train images'
  # patches the encoder gave that code (numpy reference).
  source = pipeline.make_source(_config(shapes_data_dir).data, "train[:40]")
  train_images = np.stack([encode_lib._records_of(source[i], 64)[0] for i in range(len(source))])
  codes = tok.encode(train_images).reshape(-1)
  patches = ((train_images.reshape(40, 8, 8, 8, 8, 3).transpose(0, 1, 3, 2, 4, 5)
              .reshape(-1, 192)) + 1) / 2
  mean, count = read_code_appearance(str(out))
  assert mean.shape == (32, 192) and count.sum() == 40 * 64
  np.testing.assert_array_equal(count, np.bincount(codes, minlength=32))
  for k in range(32):
    expect = patches[codes == k].mean(0) if count[k] else np.zeros(192)
    np.testing.assert_allclose(mean[k], expect, atol=1e-5)

  # The stage-2 input pipeline reads it: image tokens with their captions' ids.
  text = TextTokenizer.train([scenes.sample_scene("train", i).caption for i in range(600)], 128)
  data = pipeline.default_data_config()
  data.source, data.data_dir, data.prefetch, data.max_text_len = "tokens", str(out), 0, 32
  it = pipeline.make_iterator(data, split="validation", batch_size=16, seed=0, train=False,
                              process_index=0, process_count=1, tokenizer=text)
  seen = 0
  for batch in it:
    for tokens, caption in zip(batch["image_tokens"], text.decode_batch(batch["text_ids"])):
      assert any(np.array_equal(tokens, t) for t in by_caption[caption])
      seen += 1
  assert seen == 64
  it.close()


def test_encode_skips_and_counts_bad_records(vq_workdir, tmp_path, capsys):
  from PIL import Image
  folder = tmp_path / "folder"
  folder.mkdir()
  lines = []
  for i in range(5):
    name = f"{i}.png"
    Image.fromarray(scenes.render(scenes.sample_scene("train", i))).save(folder / name)
    lines.append(f"{name}\t{scenes.sample_scene('train', i).caption}")
  (folder / "3.png").write_bytes(b"not an image")
  lines.append("missing.png\ta caption")
  (folder / "captions.tsv").write_text("\n".join(lines) + "\n")
  out = tmp_path / "tokens"
  rc = cli.main(["encode", "--workdir", str(vq_workdir), "--output", str(out), "--splits", "train",
                 "--config.data.source=folder", f"--config.data.data_dir={folder}"])
  assert rc == 0
  summary = json.loads(capsys.readouterr().out.split("train: ", 1)[1].splitlines()[0])
  assert summary["records"] == 6 and summary["written"] == 4 and summary["skipped"] == 2
  assert summary["undecodable_image"] == 1 and summary["missing_file"] == 1
  assert len(TokenRecordSource(str(out), "train")) == 4


def test_encode_cli_errors_are_one_line(tmp_path, capsys):
  (tmp_path / "run").mkdir()
  rc = cli.main(["encode", "--workdir", str(tmp_path / "run"), "--output", str(tmp_path / "o")])
  assert rc == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and "\n" not in err


def test_evaluate_grid_shows_originals_and_reconstructions(vq_workdir):
  class Recorder:
    def __init__(self):
      self.images = {}

    def image(self, name, image, step):
      self.images[name] = (np.asarray(image), step)

    def scalar(self, name, value, step):
      pass

  task = VQTask(checkpoint.load_config(str(vq_workdir)))
  params = checkpoint.load_params(str(vq_workdir))
  writer = Recorder()
  out = task.evaluate(params, {}, 7, writer)
  assert out["val/examples"] == 16 and 0 <= out["val/fidelity"] <= 1
  grid, step = writer.images["val/reconstructions"]
  assert step == 7 and grid.shape == (3 * 64 + 2 * 2, 2 * 64 + 2, 3) and grid.dtype == np.uint8
  originals, _, skipped = evaluation.load_examples(task, "validation", 3)
  assert skipped == 0 and out["val/skipped"] == 0
  rec = VQTokenizer.from_workdir(str(vq_workdir)).decode_uint8(
      VQTokenizer.from_workdir(str(vq_workdir)).encode(originals))
  for i in range(3):
    np.testing.assert_array_equal(grid[i * 66:i * 66 + 64, :64], originals[i])
    assert np.abs(grid[i * 66:i * 66 + 64, 66:].astype(int) - rec[i]).max() <= 1


@pytest.mark.multiprocess
def test_two_process_encode_equals_one_process(vq_workdir, tmp_path, compile_cache_dir):
  """Two jax.distributed processes (4 CPU devices each) split every split's
  records and write their own shards of one dataset: the same records as one
  process with 8 devices."""
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
  out_two, out_one = tmp_path / "two", tmp_path / "one"
  args = ["--workdir", str(vq_workdir), "--splits", "validation,train[:40]",
          "--batch-size", "24", "--num-shards", "1"]
  procs = []
  for i in range(2):
    env = subprocess_env(compile_cache_dir, devices=4, extra={
        "VLGEN_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "VLGEN_NUM_PROCESSES": "2",
        "VLGEN_PROCESS_ID": str(i)})
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "vlgen_jax.cli", "encode", "--output", str(out_two), *args],
        env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  try:
    results = [p.communicate(timeout=300) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, (_, err) in zip(procs, results):
    assert p.returncode == 0, err[-3000:]
  assert cli.main(["encode", "--output", str(out_one), *args]) == 0

  info = json.loads((out_two / "dataset_info.json").read_text())
  assert sorted(info["splits"]["validation"]["shards"]) == [
      "validation-00000-of-00002.array_record", "validation-00001-of-00002.array_record"]
  two = sorted((c, t.tolist()) for t, c in TokenRecordSource(str(out_two), "validation"))
  one = sorted((c, t.tolist()) for t, c in TokenRecordSource(str(out_one), "validation"))
  assert len(two) == 64 and two == one
  # Code appearance statistics are summed over both processes' train records.
  (mean_two, count_two), (mean_one, count_one) = (read_code_appearance(str(d))
                                                  for d in (out_two, out_one))
  assert count_two.sum() == 40 * 64
  np.testing.assert_array_equal(count_two, count_one)
  np.testing.assert_allclose(mean_two, mean_one, atol=1e-5)
