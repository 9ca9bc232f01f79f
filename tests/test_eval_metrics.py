"""Dataset-agnostic evaluation of a t2i run (vlgen_jax/eval/evaluate.py):
teacher-forced loss on the run's own validation records and the VQ's
reconstruction PSNR of the real validation images."""
from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from vlgen_jax import cli
from vlgen_jax.eval import evaluate
from vlgen_jax.sample.generator import Generator
from vlgen_jax.tasks import build_task
from vlgen_jax.vq import losses as vq_losses


def test_teacher_forced_nll_equals_the_task_eval_loss(demo_tiny_dir):
  gen = Generator.load(str(demo_tiny_dir))
  captions, tokens = evaluate.split_records(gen.config, "validation", 8)
  got = evaluate.teacher_forced_nll(gen, captions, tokens, batch_size=3)  # padded batches

  task = build_task(gen.config)
  params = jax.device_get(gen.params)
  text = gen.tokenizer.encode_batch(captions, gen.spec.text_length)
  _, (metrics, _) = task.loss(params, {}, {"text_ids": text, "image_tokens": tokens},
                              jax.random.key(0), train=False)
  assert got["loss"] == pytest.approx(float(metrics["ce"]), rel=1e-5)
  assert got["bits_per_token"] == pytest.approx(float(metrics["bits_per_token"]), rel=1e-5)
  assert got["n"] == 8


def test_reconstruction_psnr_of_the_real_validation_images(demo_tiny_dir):
  gen = Generator.load(str(demo_tiny_dir))
  got = evaluate.reconstruction_psnr(gen.config, gen.vq, "validation", 5)
  # The same images read by hand from the shapes build the tokens came from.
  from vlgen_jax.shapes import tfds_builder
  builder = tfds_builder.prepare_from_name(
      "shapes/res32_train64_val16_heldout16", str(demo_tiny_dir / "data"))
  source = builder.as_data_source("validation")
  x = np.stack([source[i]["image"] for i in range(5)]).astype(np.float32) / 127.5 - 1.0
  want = float(np.mean(np.asarray(vq_losses.psnr(gen.vq.reconstruct(x), x))))
  assert got["n"] == 5 and got["psnr"] == pytest.approx(want, rel=1e-4)


def test_vlgen_eval_reports_loss_psnr_and_evaluators(demo_tiny_dir, tmp_path, capsys):
  report = tmp_path / "report"
  assert cli.main(["eval", "--workdir", str(demo_tiny_dir), "--num", "6", "--report",
                   str(report)]) == 0
  printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  saved = json.loads((report / "results.json").read_text())
  assert printed == saved
  assert saved["n"] == 6 and saved["split"] == "validation"
  assert saved["t2i"]["n"] == 6 and saved["t2i"]["bits_per_token"] > 0
  assert saved["vq"]["n"] == 6 and saved["vq"]["psnr"] > 0
  assert 0 <= saved["shapes"]["fidelity"] <= 1  # the run's own evaluator
  assert (report / "grid.png").exists() and (report / "samples" / "sample.json").exists()

  # Prompts from a file: sampled and scored, no split metrics.
  prompts = tmp_path / "p.txt"
  prompts.write_text("a large red circle in the center\nsomething else entirely\n")
  assert cli.main(["eval", "--workdir", str(demo_tiny_dir), "--prompts", str(prompts),
                   "--report", str(tmp_path / "r2")]) == 0
  r2 = json.loads((tmp_path / "r2" / "results.json").read_text())
  assert r2["n"] == 2 and "t2i" not in r2 and r2["shapes"]["unscored"] == 1
  assert cli.main(["eval", "--workdir", str(demo_tiny_dir), "--split", "nope"]) == 2


def test_default_report_folder_differs_whenever_the_samples_would():
  """Evals that differ in checkpoint, seed, sampling or rule never share a
  default report folder (one would overwrite the other); the same eval twice does."""
  from vlgen_jax.eval.evaluate import report_name
  from vlgen_jax.sample.sampler import SamplingOptions
  base = dict(parallel=False, seed=0, step=100)
  options = SamplingOptions(temperature=1.0, top_k=0, plausibility=0.3)
  name = report_name("heldout", 200, options, **base)
  assert name == report_name("heldout", 200, SamplingOptions(temperature=1.0, top_k=0,
                                                            plausibility=0.3), **base)
  variants = [
      report_name("heldout", 200, SamplingOptions(temperature=1.0, top_k=0, plausibility=0.1),
                  **base),
      report_name("heldout", 200, SamplingOptions(temperature=0.3, top_k=0, plausibility=0.3),
                  **base),
      report_name("heldout", 200, SamplingOptions(temperature=1.0, top_k=0, plausibility=0.3,
                                                  decoding="jacobi"), **base),
      report_name("heldout", 200, options, **dict(base, seed=1)),
      report_name("heldout", 200, options, **dict(base, step=200)),
      report_name("heldout", 200, options, **base, selection="contrastive", candidates=8),
      report_name("heldout", 200, options, **base, selection="contrastive", candidates=8,
                  judge="/runs/masked"),
      report_name("validation", 200, options, **base),
  ]
  assert len(set(variants + [name])) == len(variants) + 1
  assert "-seed0-" in name and "-T1-" in name and "-a0.3" in name
