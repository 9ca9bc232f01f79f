"""`vlgen eval` as library functions: evaluate a run, or a folder of images."""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from vlgen_jax.data import pipeline, token_records
from vlgen_jax.errors import UserError
from vlgen_jax.eval import caption_metrics, frechet
from vlgen_jax.eval import report as report_lib
from vlgen_jax.eval import retrieval
from vlgen_jax.runs import t2i_config
from vlgen_jax.sample.generator import Generator
from vlgen_jax.sample.outputs import SAMPLE_INFO, read_prompts_file, write_outputs
from vlgen_jax.sample.sampler import SamplingOptions
from vlgen_jax.tasks.families import get_family
from vlgen_jax.train import mesh as mesh_lib
from vlgen_jax.vq import losses as vq_losses


def split_captions(config, split: str, num: int) -> list[str]:
  """The first `num` captions of `split` of the run's own token dataset."""
  data_dir = config.data.data_dir
  if config.data.source != "tokens" or not data_dir:
    raise UserError("the run was not trained on a token dataset (data.source=tokens); "
                    "pass --prompts FILE")
  source = token_records.TokenRecordSource(data_dir, split)
  if len(source) == 0:
    raise UserError(f"split {split!r} of {data_dir} is empty")
  return [token_records.decode_token_record(source[i])[1]
          for i in range(min(num, len(source)))]


def split_records(config, split: str, num: int) -> tuple[list[str], np.ndarray]:
  """(captions, image tokens (n, N)) of the first `num` records of `split`."""
  source = token_records.TokenRecordSource(config.data.data_dir, split)
  records = [token_records.decode_token_record(source[i]) for i in range(min(num, len(source)))]
  return [c for _, c in records], np.stack([t for t, _ in records])


def report_name(source: str, num: int, options, *, parallel: bool, seed: int, step,
                selection: str | None = None, candidates: int = 1,
                judge: str | None = None) -> str:
  """The default report folder of an eval: every setting that changes its
  samples (checkpoint, seed, sampling, rule), so evals that differ never
  overwrite each other and the same eval run twice lands in the same place."""
  steps = f"-steps{options.steps}" if parallel else ""
  rule = f"-{selection}{candidates}" if selection else ""
  # The settings people vary, readable; a hash of all of them for the rest
  # (schedules, decoding, ...).
  digest = hashlib.sha256((repr(options) + (judge or "")).encode()).hexdigest()[:6]
  return (f"{source}-{num}-step{step}-seed{seed}-cfg{options.cfg_scale:g}"
          f"-T{options.temperature:g}-k{options.top_k}-a{options.plausibility:g}"
          f"{steps}{rule}-{digest}")


def teacher_forced_nll(gen: Generator, captions, tokens, batch_size: int) -> dict[str, float]:
  """Validation loss of the t2i model on (caption, image tokens) pairs: mean
  negative log-likelihood per image token in nats and bits (the training
  `ce` and `bits_per_token`, without caption dropout)."""
  log_probs = gen.token_log_probs(captions, tokens, batch_size=batch_size)
  nats = -float(log_probs.sum(dtype=np.float64)) / log_probs.size
  return {"loss": nats, "bits_per_token": nats / math.log(2), "n": len(captions)}


def reconstruction_psnr(config, vq, split: str, num: int) -> dict[str, float] | None:
  """PSNR (dB) of the VQ's reconstructions of the first `num` real images of
  `split` of the data the token dataset was encoded from (None when that
  data is no longer readable)."""
  meta = token_records.read_info(config.data.data_dir)["meta"]
  data = pipeline.default_data_config()
  data.update({k: v for k, v in meta.get("data", {}).items() if k in data})
  data.resolution = vq.resolution
  try:
    source = pipeline.make_source(data, split)
  except UserError:
    return None
  processor = pipeline.ImageTextProcessor(vq.resolution)
  images = []
  for i in range(len(source)):
    example, _ = processor(source[i])
    if example is not None:
      images.append(example["image"])
    if len(images) == num:
      break
  if not images:
    return None
  x = np.stack(images)  # float32 in [-1, 1]
  rec = vq.reconstruct(x)
  psnr = np.asarray(vq_losses.psnr(jnp.asarray(rec), jnp.asarray(x)))
  return {"psnr": float(psnr.mean()), "n": len(images)}


def evaluate_run(workdir: str, *, split: str = "validation", num: int = 200,
                 prompts_file: str | None = None, report: str | None = None,
                 evaluator_names: Sequence[str] | None = None,
                 sampling_overrides: Mapping | None = None, seed: int = 0,
                 batch_size: int = 32, step: int | None = None,
                 vq_workdir: str | None = None, mesh: str | None = None,
                 dtype: str | None = None, quantize: str = "none",
                 scorer: str | None = None, candidates: int = 1, selection: str = "consistent",
                 judge: str | None = None, r_precision: int = 100,
                 fd_features: str = "none", inception_weights: str | None = None
                 ) -> dict | None:
  """Samples captions of the run's split (or a prompts file), scores and
  reports them; returns the results on process 0 (None elsewhere).

  With `scorer` (a captioner run): each image is one of `candidates` kept by
  `selection` (vlgen_jax/sample/rerank.py; `judge`: the contrastive rule's
  t2i run, default the sampled one), and R-precision (R = `r_precision`, 0 = off)
  of the samples and of the split's real images is reported; `fd_features`
  "captioner" / "inception" adds FD and KID against the split's real images
  (vlgen_jax/eval/caption_metrics.py)."""
  from vlgen_jax.sample import rerank
  rerank.check_arguments(scorer, candidates, selection, judge)
  if fd_features not in ("none", "captioner", "inception"):
    raise UserError(f"--fd-features must be none, captioner or inception, got {fd_features!r}")
  if fd_features == "captioner" and not scorer:
    raise UserError("--fd-features captioner needs --scorer RUN (its image encoder)")
  if fd_features == "inception" and not inception_weights:
    raise UserError("--fd-features inception needs --inception-weights FILE")
  if (fd_features != "none" or (scorer and r_precision)) and prompts_file:
    raise UserError("R-precision and FD compare with the split's real images; drop --prompts")
  mesh_lib.maybe_initialize_distributed()  # several processes: before touching devices
  config = t2i_config(workdir)
  # Everything the user could get wrong is checked before params are loaded.
  options = SamplingOptions.from_config(config, **(sampling_overrides or {}))
  names = list(config.evaluators) if evaluator_names is None else list(evaluator_names)
  report_lib.evaluators_lib.build_all(names)
  if prompts_file:
    captions, tokens = read_prompts_file(prompts_file)[:num], None
  else:
    split_captions(config, split, num)  # checks the split before params are loaded
    captions, tokens = split_records(config, split, num)
  gen = Generator.load(workdir, step=step, vq_workdir=vq_workdir, mesh_overrides=mesh,
                       dtype=dtype, quantize=quantize)
  metrics = {}
  if tokens is not None:
    # What holds for any data: how well the model predicts the split's real
    # codes (families with a token likelihood), and how faithfully the VQ
    # reproduces its real images.
    if get_family(gen.spec.family).exact_likelihood:
      metrics["t2i"] = teacher_forced_nll(gen, captions, tokens, batch_size)
    psnr = reconstruction_psnr(config, gen.vq, split, num)
    if psnr is not None:
      metrics["vq"] = psnr
  captioner = rerank.load_scorer(scorer, gen)
  judge_gen = rerank.load_judge(judge, gen)
  start = time.perf_counter()
  with tqdm(total=len(captions) * candidates, desc=f"eval {split}", unit="img",
            disable=jax.process_index() != 0) as bar:
    images, sampled, _ = rerank.generate(gen, captioner, captions, options,
                                         candidates=candidates, seed=seed,
                                         batch_size=batch_size, progress=bar.update,
                                         selection=selection, judge=judge_gen)
  if tokens is not None:
    # Retrieval (eval/retrieval.py) against the split's own tokens decoded by
    # the run's VQ: the images the model was trained to draw. They exist
    # whenever the run does (the real images may have moved) and leave out
    # what the VQ cannot reconstruct, which is not the t2i model's to fix
    # (that is metrics["vq"]).
    references = gen.vq.decode_uint8(tokens.reshape(len(tokens), *gen.spec.image_grid))
  if jax.process_index() != 0:
    return None
  judged = captioner is not None and selection == "contrastive"
  metrics.update(candidates=candidates, rerank=selection if captioner is not None else None,
                 judge=os.path.abspath(judge_gen.run) if judged else None,
                 seconds_per_kept_image=(time.perf_counter() - start) / len(captions))
  if captioner is not None and r_precision:
    metrics.update(caption_metrics.scorer_metrics(captioner, sampled, tokens, captions,
                                                  R=r_precision, seed=seed))
  if fd_features == "captioner":
    features = frechet.CaptionerFeatures(captioner)
    metrics.update({f"captioner_{k}": v for k, v in caption_metrics.frechet_metrics(
        features.features_of_tokens(tokens), features.features_of_tokens(sampled)).items()})
  elif fd_features == "inception":
    features = frechet.InceptionFeatures(inception_weights)
    real = gen.vq.decode_uint8(tokens.reshape(len(tokens), *gen.spec.image_grid))
    metrics.update({f"inception_{k}": v for k, v in caption_metrics.frechet_metrics(
        features(real), features(images)).items()})
  source = f"prompts-{os.path.basename(prompts_file)}" if prompts_file else split
  parallel = get_family(gen.spec.family).uses_steps
  report = report or os.path.join(gen.run, "eval", report_name(
      source, num, options, parallel=parallel, seed=seed,
      step=gen.step, selection=selection if captioner is not None else None,
      candidates=candidates, judge=judge and os.path.abspath(judge)))
  write_outputs(os.path.join(report, "samples"), images, captions, captions_in_grid=False,
                info={"run": os.path.abspath(gen.run), "step": gen.step,
                      "evaluators": names})
  if tokens is not None:
    metrics["retrieval"] = retrieval.retrieval_accuracy(images, references)
  return report_lib.write_report(report, images, captions, names, {**metrics,
      "split": None if prompts_file else split, "prompts": prompts_file,
      "step": gen.step, "cfg_scale": options.cfg_scale,
      "temperature": options.temperature, "top_k": options.top_k, "top_p": options.top_p,
      "plausibility": options.plausibility, "family": gen.spec.family,
      "steps": options.steps if parallel else None,
      "decoding": options.decoding, "draft_len": options.draft_len, "dtype": gen.spec.dtype,
      "quantize": quantize,
      "seed": seed, "report": report})


def evaluate_folder(folder: str, *, report: str | None = None,
                    evaluator_names: Sequence[str] | None = None) -> dict:
  """Scores the images of a folder with captions.tsv (e.g. `vlgen sample`'s)."""
  if evaluator_names is None:
    info_path = os.path.join(folder, SAMPLE_INFO)
    if not os.path.isfile(info_path):
      raise UserError(f"{folder} was not written by `vlgen sample` ({SAMPLE_INFO} missing); "
                      f"name the evaluators with --evaluators (registered: "
                      f"{', '.join(sorted(report_lib.evaluators_lib.EVALUATORS))})")
    try:
      with open(info_path, encoding="utf-8") as f:
        evaluator_names = json.load(f).get("evaluators", [])
    except (ValueError, AttributeError) as e:
      raise UserError(f"{info_path} is not a JSON object written by `vlgen sample` ({e}); name "
                      "the evaluators with --evaluators") from None
  report_lib.evaluators_lib.build_all(evaluator_names)
  skipped = {}
  images, captions = report_lib.read_image_folder(folder, skipped)
  if skipped:
    print(f"warning: skipped {sum(skipped.values())} image(s) of {folder}: "
          + ", ".join(f"{k} {v}" for k, v in sorted(skipped.items())), file=sys.stderr)
  return report_lib.write_report(report or os.path.join(folder, "eval"), images, captions,
                                 evaluator_names, {"images": folder, "skipped": skipped})
