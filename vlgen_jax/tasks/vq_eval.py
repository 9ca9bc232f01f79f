"""Periodic tokenizer evaluation (`VQTask.evaluate`): reconstructs the first
`config.vq_eval.num_examples` records of the eval split and reports PSNR,
codebook usage and perplexity over all their tokens, the run's evaluators
(`config.evaluators`, e.g. shapes caption fidelity) on the reconstructions,
and an original | reconstruction grid.

Every process runs it (the forward pass is collective over the mesh that
holds the params); every process reads all the eval images, which are few,
and only process 0's writer writes.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from vlgen_jax.eval import evaluators as evaluators_lib
from vlgen_jax.train import sharding as sharding_lib
from vlgen_jax.vq import losses
from vlgen_jax.vq import quantizer as quantizer_lib

BATCH_AXES = ("data", "fsdp")


def load_examples(task, split: str, limit: int) -> tuple[np.ndarray, list[str], int]:
  """The first `limit` decodable records of `split`: (uint8 images, captions
  ("" where a record has none), number of undecodable records skipped)."""
  from vlgen_jax.data import decode, pipeline  # pylint: disable=g-import-not-at-top
  data = task.data_config()
  source = pipeline.make_source(data, split)
  images, captions, skipped = [], [], 0
  for i in range(len(source)):
    if len(images) >= limit:
      break
    raw = source[i]
    try:
      if raw.get("image") is None or raw.get("error"):
        raise decode.BadRecord(decode.MISSING_FILE)
      image, _ = decode.load_image(raw["image"], int(data.resolution))
      caption = ""
      if raw.get("caption") is not None:
        choices = decode.caption_choices(raw["caption"])
        caption = decode.decode_caption(choices[0]) if choices else ""
    except decode.BadRecord:
      skipped += 1  # Evaluation takes the next good record instead.
      continue
    images.append(decode.from_model_range(image))
    captions.append(caption)
  if not images:
    return np.zeros((0, data.resolution, data.resolution, 3), np.uint8), [], skipped
  return np.stack(images), captions, skipped


def _mesh_of(params) -> jax.sharding.Mesh | None:
  for leaf in jax.tree.leaves(params):
    sharding = getattr(leaf, "sharding", None)
    if isinstance(sharding, NamedSharding):
      return sharding.mesh
  return None


def reconstruct(task, params, images: np.ndarray, batch_size: int
                ) -> tuple[np.ndarray, np.ndarray]:
  """uint8 images -> (reconstructions as float [-1, 1], indices (N, h, w)).

  Batches are spread over the params' mesh (padded to a multiple of its
  data-parallel size); results are replicated to every process.
  """
  mesh = _mesh_of(params)
  dp = 1
  if mesh is not None:
    dp = int(np.prod([mesh.shape[a] for a in BATCH_AXES if a in mesh.shape]))
  batch_size = -(-max(1, batch_size) // dp) * dp

  rows = None
  if mesh is not None:
    rows = NamedSharding(mesh, P(tuple(a for a in BATCH_AXES if a in mesh.shape)))
  run = _reconstruct_fn(task, mesh)
  recs, idxs = [], []
  for start in range(0, len(images), batch_size):
    chunk = images[start:start + batch_size]
    pad = batch_size - len(chunk)
    x = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)]) if pad else chunk
    x = x.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
    if rows is not None:
      x = sharding_lib.to_global(x, rows)
    x_rec, indices = run(params["vq"], x)
    recs.append(sharding_lib.to_host(x_rec)[:len(chunk)])
    idxs.append(sharding_lib.to_host(indices)[:len(chunk)])
  return np.concatenate(recs), np.concatenate(idxs)


def _reconstruct_fn(task, mesh):
  """The jitted forward pass, built once per task and mesh (no recompiles)."""
  cache = task.__dict__.setdefault("_eval_fns", {})
  if mesh not in cache:
    def fn(vq, x):
      x_rec, indices, _, _ = task.forward(vq, x)
      return x_rec, indices

    if mesh is None:
      cache[mesh] = jax.jit(fn)
    else:
      replicated = NamedSharding(mesh, P())
      cache[mesh] = jax.jit(fn, out_shardings=(replicated, replicated))
  return cache[mesh]


def grid(originals: np.ndarray, reconstructions: np.ndarray, gap: int = 2) -> np.ndarray:
  """One row per example: original | reconstruction, uint8, gray separators."""
  n, h, w, _ = originals.shape
  out = np.full((n * (h + gap) - gap, 2 * w + gap, 3), 128, np.uint8)
  for i in range(n):
    y = i * (h + gap)
    out[y:y + h, :w] = originals[i]
    out[y:y + h, w + gap:] = reconstructions[i]
  return out


def evaluate(task, params, step: int, writer) -> dict[str, Any]:
  cfg = task.config.vq_eval
  split = task.config.eval_split
  images, captions, skipped = _cached_examples(task, split, int(cfg.num_examples))
  if not len(images):
    return {"val/examples": 0, "val/skipped": skipped}
  x_rec, indices = reconstruct(task, params, images, int(cfg.batch_size))
  x = images.astype(np.float32) / 127.5 - 1.0
  counts = quantizer_lib.code_counts(jnp.asarray(indices), task.model_config.num_codes)
  out = {
      "val/psnr": float(jnp.mean(losses.psnr(jnp.asarray(x_rec), jnp.asarray(x)))),
      "val/codebook_usage": float(jnp.mean((counts > 0).astype(jnp.float32))),
      "val/perplexity": float(quantizer_lib.perplexity(counts)),
      "val/examples": len(images),
      "val/skipped": skipped,
  }
  rec_uint8 = np.asarray(losses.to_uint8(jnp.asarray(x_rec)))
  # The run's evaluators judge the reconstructions against the captions
  # (e.g. "shapes": does the reconstruction still show what the caption says?).
  if task.config.evaluators and all(captions):
    evaluators = evaluators_lib.build_all(task.config.evaluators)
    _, summaries = evaluators_lib.run_all(evaluators, list(rec_uint8), captions)
    for summary in summaries.values():
      out.update({"val/fidelity" if k == "fidelity" else f"val/fidelity_{k}": float(v)
                  for k, v in summary.items() if k not in ("n", "unscored")})
  n = min(int(cfg.grid_examples), len(images))
  if n > 0:
    writer.image("val/reconstructions", grid(images[:n], rec_uint8[:n]), step)
  return out


def _cached_examples(task, split: str, limit: int):
  # The eval set never changes during a run: decode it once per task.
  cache = task.__dict__.setdefault("_eval_examples", {})
  if (split, limit) not in cache:
    cache[(split, limit)] = load_examples(task, split, limit)
  return cache[(split, limit)]
