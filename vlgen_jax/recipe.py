"""Recipes for `vlgen demo --data DIR`: VQ and t2i settings derived from the data.

What is measured on the data (before anything is written):
  num_train       train records (bad ones included; they are skipped later)
  detail_db       PSNR of train images (64 spread over the split, at the
                  demo resolution) after a box down/up-sampling by 8: how much
                  of the image lives below an 8 px token. Flat drawings
                  (shapes) measure ~30 dB; shaded, textured objects and
                  photos 20-25 dB.
  caption_words   longest caption (words) among 256 spread over the split

What follows (docs/own_data.md, "Picking a recipe"):
  VQ factor       quick: 8 up to 96 px, else 16 (an 8x8 or coarser grid keeps
                  the t2i sequence CPU-sized); full: the LlamaGen-like f16 at
                  >= 192 px, 8 at 128 px, 4 at 64 px. The resolution must be
                  divisible by it (else: error, nothing written).
  codes           quick: 512 for flat data (detail_db >= 28), 1024 otherwise;
                  full: 4096 at <= 64 px, the LlamaGen 16384 above; never
                  more than one code per 16 train tokens (min 16).
  VQ width/steps  quick: 192 channels, 1 residual block: the shapes quick
                  start's VQ (the same step time), so a quick run costs what
                  the shapes quick start does on the same machine (at 256 x 1
                  a 64 px step took 1.6x as long).
                  full: 256 x 2 for detailed data, 192 x 1 for flat. Steps: ~10
                  epochs at batch 16 within [500, 2000] (quick), [2000,
                  20000] (full).
  t2i             width from the image count (128 below 20k train images,
                  256 up to 200k, 512 above; full budget one size up), text
                  length from the longest caption, steps ~40 epochs at batch 16
                  within [1000, 6000] (quick) or [5000, 100000] (full).

`tiny` is a test-size budget (seconds on a CPU, nothing trained to quality;
not listed in --help).
"""
from __future__ import annotations

import json
import math

import ml_collections
import numpy as np

from vlgen_jax.data import layout as layout_lib
from vlgen_jax.errors import UserError

BUDGETS = ("quick", "full")
HIDDEN_BUDGETS = ("tiny",)
FLAT_DETAIL_DB = 28.0


def detail_db(images, factor: int = 8) -> float:
  """Mean PSNR of uint8 images after a factor-`factor` box down/up-sampling."""
  psnrs = []
  for im in images:
    x = np.asarray(im, np.float64)
    h, w = (x.shape[0] // factor) * factor, (x.shape[1] // factor) * factor
    x = x[:h, :w]
    small = x.reshape(h // factor, factor, w // factor, factor, 3).mean((1, 3))
    up = np.repeat(np.repeat(small, factor, 0), factor, 1)
    mse = np.mean((x - up) ** 2)
    psnrs.append(99.0 if mse == 0 else 10 * math.log10(255.0 ** 2 / mse))
  return float(np.mean(psnrs))


def _pow2_at_most(x: float) -> int:
  return 2 ** int(math.floor(math.log2(max(1.0, x))))


def vq_factor(budget: str, resolution: int) -> int:
  if budget == "tiny":
    return 8
  if budget == "quick":
    return 8 if resolution <= 96 else 16
  return 4 if resolution <= 64 else 8 if resolution <= 128 else 16


def check_inputs(budget: str, resolution: int) -> int:
  """The VQ factor, or a UserError for an unknown budget or a resolution the
  factor does not divide."""
  if budget not in BUDGETS + HIDDEN_BUDGETS:
    raise UserError(f"unknown --budget {budget!r}; choose one of {', '.join(BUDGETS)}")
  if resolution < 16:
    raise UserError(f"--resolution must be at least 16, got {resolution}")
  factor = vq_factor(budget, resolution)
  if resolution % factor:
    raise UserError(f"--resolution {resolution} is not divisible by the VQ factor {factor} "
                    f"of the {budget} budget (try {resolution // factor * factor} or "
                    f"{(resolution // factor + 1) * factor})")
  return factor


def build(data_dir: str, *, resolution: int = 64, budget: str = "quick",
          seed: int = 0) -> ml_collections.ConfigDict:
  """The demo config (the structure of configs/demo_quickstart.py plus
  `data` and `recipe`) for the user's data; UserError on bad input."""
  factor = check_inputs(budget, resolution)
  lay = layout_lib.detect(data_dir)
  images = layout_lib.sample_images(lay, resolution)
  detail = detail_db(images, 8)
  captions = layout_lib.sample_captions(lay)
  words = max((len(c.split()) for c in captions), default=8)
  n = lay.num_train
  grid = resolution // factor
  train_tokens = n * grid * grid
  flat = detail >= FLAT_DETAIL_DB

  if budget == "tiny":
    num_codes, vq = 16, dict(ch=16, num_res_blocks=1, z_channels=8, steps=4, batch=8)
    t2i = dict(d_model=32, heads=2, mlp=64, enc=1, dec=1, steps=4, batch=8)
    text_vocab = 64
  else:
    if budget == "quick":
      num_codes = 512 if flat else 1024
    else:
      num_codes = 4096 if resolution <= 64 else 16384
    num_codes = max(16, min(num_codes, _pow2_at_most(train_tokens / 16)))
    lo, hi = (500, 2000) if budget == "quick" else (2000, 20000)
    wide = budget == "full" and not flat
    vq = dict(ch=256 if wide else 192, num_res_blocks=2 if wide else 1, z_channels=64,
              steps=int(np.clip(round(10 * n / 16, -2), lo, hi)), batch=16)
    size = 0 if n < 20_000 else 1 if n < 200_000 else 2
    if budget == "full":
      size = min(2, size + 1)
    d_model = (128, 256, 512)[size]
    lo, hi = (1000, 6000) if budget == "quick" else (5000, 100_000)
    t2i = dict(d_model=d_model, heads=max(4, d_model // 64), mlp=4 * d_model,
               enc=(1, 2, 4)[size], dec=(3, 6, 12)[size],
               steps=int(np.clip(round(40 * n / 16, -3), lo, hi)), batch=16)
    text_vocab = 256 if budget == "quick" else 1024
  text_length = int(min(64, max(16, 8 * math.ceil((1.5 * words + 2) / 8))))

  c = ml_collections.ConfigDict()
  c.seed = seed
  c.resolution = resolution
  c.text_vocab_size = text_vocab
  c.data = lay.to_dict()
  c.recipe = ml_collections.ConfigDict({
      "budget": budget, "vq_factor": factor, "token_grid": grid, "num_codes": num_codes,
      "measured": {"num_train": n, "num_validation": lay.num_validation,
                   "detail_db": round(detail, 2), "flat": flat, "caption_words": words}})
  data_overrides = (f"data.source={lay.source}", f"data.data_dir={lay.data_dir}",
                    f"data.resolution={resolution}", f"train_split={lay.train_split}",
                    f"eval_split={lay.validation_split}")
  common = ("eval_every=0", "data.read_threads=2")
  c.vq = ml_collections.ConfigDict({
      "config": "configs/vq_own.py",
      "overrides": data_overrides + common + (
          f"model.patch_size={factor}", f"model.num_codes={num_codes}",
          f"model.ch={vq['ch']}", f"model.num_res_blocks={vq['num_res_blocks']}",
          f"model.z_channels={vq['z_channels']}", f"total_steps={vq['steps']}",
          f"batch_size={vq['batch']}", f"checkpoint_every={max(1, vq['steps'] // 4)}",
          f"log_every={max(1, min(100, vq['steps'] // 4))}",
          f"vq_eval.num_examples={min(200, lay.num_validation)}",
          f"vq_eval.batch_size={min(100, max(1, lay.num_validation))}",
          f"codebook.num_recent={min(1024, max(16, n))}"),
  })
  c.t2i = ml_collections.ConfigDict({
      "config": "configs/t2i_own.py",
      "overrides": common + (
          f"model.image_vocab_size={num_codes}", f"model.image_grid=({grid},{grid})",
          f"model.code_feature_dim={factor * factor * 3}",
          f"model.text_vocab_size={text_vocab}", f"model.text_length={text_length}",
          f"model.d_model={t2i['d_model']}", f"model.num_heads={t2i['heads']}",
          f"model.mlp_dim={t2i['mlp']}", f"model.encoder_layers={t2i['enc']}",
          f"model.decoder_layers={t2i['dec']}", f"total_steps={t2i['steps']}",
          f"batch_size={t2i['batch']}", f"checkpoint_every={max(1, t2i['steps'] // 6)}",
          f"log_every={max(1, min(500, t2i['steps'] // 4))}"),
  })
  c.sample = ml_collections.ConfigDict({"num_prompts": 4, "num_per_prompt": 4})
  c.eval = ml_collections.ConfigDict({"split": "validation",
                                      "num": int(min(200, lay.num_validation))})
  return c


def describe(c: ml_collections.ConfigDict) -> str:
  """A few lines for the terminal: what was measured and what was chosen."""
  r, m = c.recipe, c.recipe.measured
  over = {o.split("=")[0]: o.split("=", 1)[1] for o in c.t2i.overrides}
  vq = {o.split("=")[0]: o.split("=", 1)[1] for o in c.vq.overrides}
  return "\n".join([
      f"[demo] data: {c.data.source} in {c.data.data_dir}: train {c.data.train_split} "
      f"({m.num_train} records), validation {c.data.validation_split} ({m.num_validation})"
      + (" held out of train" if c.data.validation_held_out else ""),
      f"[demo] measured: detail {m.detail_db:.1f} dB after 8x down/up-sampling "
      f"({'flat' if m.flat else 'detailed'}), captions up to {m.caption_words} words",
      f"[demo] recipe ({r.budget}, {c.resolution} px): VQ factor {r.vq_factor} "
      f"({r.token_grid}x{r.token_grid} tokens), {r.num_codes} codes, width {vq['model.ch']}, "
      f"{vq['total_steps']} steps; t2i d_model {over['model.d_model']}, "
      f"{over['model.decoder_layers']} decoder layers, {over['total_steps']} steps of batch "
      f"{over['batch_size']}; text vocab {c.text_vocab_size}, length {over['model.text_length']}",
  ])


def to_json(c: ml_collections.ConfigDict) -> str:
  return json.dumps(c.to_dict(), indent=2)
