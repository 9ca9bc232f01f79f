"""The contract between the model-agnostic trainer and a model family.

`vlgen train --config configs/X.py` reads `config.task` (a name in
`vlgen_jax.tasks.TASKS`) and builds that Task from the config. The trainer
owns the mesh, sharding, optimizer, jit-compiled step, checkpoints, metrics and the loop; a Task owns
its model, its loss and its input. Everything a Task returns that lives on
device is a pytree of arrays; params carry logical axis names (Flax
`nn.with_logical_partitioning` / `nn.Partitioned` boxes) so the trainer can
shard them with `config.logical_axis_rules`.

Logical axis vocabulary shared by all models (the rules map them to the mesh
axes `data`, `fsdp`, `tensor`):
  params:      vocab, embed, mlp, heads, kv, layers, norm, conv_in, conv_out, codebook
  activations: activation_batch, activation_length, activation_embed,
               activation_heads, activation_kv, activation_mlp, activation_vocab
"""
from __future__ import annotations

from typing import Any, Iterator, Mapping

import ml_collections

PyTree = Any
Metrics = Mapping[str, Any]  # name -> scalar jax array (fp32)


class Task:
  """Base class; subclasses override what their model needs.

  Params and model state reach `loss`, `post_update`, `optimizer_labels` and
  `evaluate` unboxed (plain arrays, sharded by the trainer); only `init`
  returns them boxed with logical axis names.
  """

  # True when the model rematerialises its own layers from `config.remat`
  # (e.g. nn.remat inside nn.scan); otherwise the trainer wraps the whole
  # loss in `jax.checkpoint` with that policy.
  handles_remat = False

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config

  # ---- input -------------------------------------------------------------
  def input_iterator(self, split: str, *, batch_size: int, train: bool, seed: int,
                     process_index: int, process_count: int) -> Iterator[dict]:
    """Per-process batches (dict of numpy arrays, leading dim `batch_size`).

    For `train=True` the iterator must be a Grain `DatasetIterator` (has
    `get_state()` / `set_state()`), endless, and deterministic given `seed`,
    so checkpoints can save and restore it exactly. Data skip counters, if
    any, are returned by `data_stats()`.
    """
    raise NotImplementedError

  def data_stats(self) -> dict[str, int]:
    """Counts of skipped/converted records so far (logged by the trainer)."""
    return {}

  # ---- model -------------------------------------------------------------
  def init(self, rng, batch: dict) -> tuple[PyTree, PyTree]:
    """Returns `(params, model_state)` for one example batch.

    `params` are trained by the optimizer (boxed with logical names);
    `model_state` holds non-gradient state (e.g. codebook usage counters),
    also boxed with logical names where it has a shardable axis, or `{}`.
    Called under `jax.jit` with `out_shardings`, never eagerly, so it must be
    pure and trace-friendly.
    """
    raise NotImplementedError

  def loss(self, params: PyTree, model_state: PyTree, batch: dict, rng, *,
           train: bool) -> tuple[Any, tuple[Metrics, PyTree]]:
    """Returns `(scalar fp32 loss, (metrics, new_model_state))`.

    Called inside the jit-compiled train step under `jax.value_and_grad`
    (differentiated w.r.t. `params` only) and in eval with `train=False`.
    The trainer averages metrics over micro-batches.
    """
    raise NotImplementedError

  def post_update(self, params: PyTree, model_state: PyTree, rng) -> tuple[PyTree, PyTree]:
    """Hook after the optimizer update, inside the step (e.g. dead-code restart)."""
    return params, model_state

  def optimizer_labels(self, params: PyTree) -> PyTree | None:
    """Optional: a pytree of strings like `params` that assigns each leaf to an
    optimizer in `config.optimizers` (e.g. "generator" / "discriminator");
    None means one optimizer from `config.optimizer`. The trainer calls it
    with abstract params (jax.ShapeDtypeStruct leaves): use paths and shapes
    only."""
    return None

  def frozen_params(self, params: PyTree) -> PyTree | None:
    """Optional: a pytree of bools like `params`, True for leaves the
    optimizer never updates (e.g. constants derived from another model).
    Called like `optimizer_labels`, with abstract params."""
    return None

  def export_files(self) -> dict[str, str]:
    """Extra files a params-only export needs to be used on its own (e.g. the
    SentencePiece model): `{name: source file or directory}`, copied to
    `export/assets/name`."""
    return {}

  # ---- accounting ---------------------------------------------------------
  def flops_per_example(self) -> float:
    """Training FLOPs (forward + backward) per example, for MFU."""
    return 0.0

  def tokens_per_example(self) -> int:
    """Tokens (or pixels/patches, as the task defines) per example, for tokens/s."""
    return 1

  # ---- evaluation (host side, process 0 writes) ----------------------------
  def evaluate(self, params: PyTree, model_state: PyTree, step: int, writer) -> dict[str, float]:
    """Optional periodic evaluation beyond the eval loss (grids, fidelity).

    `writer` has `scalar(name, value, step)` and `image(name, uint8 HxWx3, step)`.
    Returns scalars to log.
    """
    return {}
