"""Optax optimizers from the config: AdamW, Adafactor or SGD, a warmup +
cosine/linear/constant learning-rate schedule, global-norm clipping, and a
weight-decay mask. Tasks with several optimizers (`Task.optimizer_labels`)
get one per label from `config.optimizers`, combined with
`optax.multi_transform`."""
from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from vlgen_jax.errors import UserError

PyTree = Any
Schedule = Callable[[jax.Array], jax.Array]

OPTIMIZERS = ("adamw", "adafactor", "sgd")
SCHEDULES = ("cosine", "linear", "constant")


def learning_rate_schedule(opt: ml_collections.ConfigDict, total_steps: int) -> Schedule:
  """Linear warmup to the peak (nonzero from the first update), then decay to
  `end_lr_ratio * peak` at `total_steps` (cosine or linear) or stay (constant).

  Takes optax's update count (0 for the first update).
  """
  peak = float(opt.learning_rate)
  end = peak * float(opt.get("end_lr_ratio", 0.0))
  warmup = int(opt.get("warmup_steps", 0))
  kind = opt.get("schedule", "cosine")
  if kind not in SCHEDULES:
    raise UserError(f"optimizer schedule must be one of {', '.join(SCHEDULES)}, got: {kind}")
  decay_steps = max(1, total_steps - warmup)

  def schedule(count):
    count = jnp.asarray(count, jnp.float32)
    if kind == "constant":
      # No reference to total_steps: the compiled step stays the same when
      # only the run length changes.
      lr = jnp.full_like(count, peak)
    else:
      progress = jnp.clip((count - warmup) / decay_steps, 0.0, 1.0)
      if kind == "cosine":
        lr = end + (peak - end) * 0.5 * (1.0 + jnp.cos(math.pi * progress))
      else:
        lr = peak + (end - peak) * progress
    if warmup > 0:
      lr = jnp.where(count < warmup, peak * (count + 1.0) / warmup, lr)
    return lr

  return schedule


def path_name(path) -> str:
  """A readable "a/b/c" name for a tree key path."""
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return "/".join(parts)


def decay_mask(params: PyTree, no_decay) -> PyTree:
  """True for leaves that get weight decay: those whose path contains none of
  the `no_decay` substrings (case-insensitive)."""
  needles = tuple(s.lower() for s in no_decay)
  return jax.tree_util.tree_map_with_path(
      lambda p, _: not any(n in path_name(p).lower() for n in needles), params)


def _base(opt: ml_collections.ConfigDict, schedule: Schedule):
  # The mask is a function of the tree it sees, so it also fits the masked
  # trees (MaskedNode leaves) inside optax.multi_transform.
  no_decay = tuple(opt.get("no_decay", ()))
  mask = lambda tree: decay_mask(tree, no_decay)  # noqa: E731
  name = opt.get("name", "adamw")
  wd = float(opt.get("weight_decay", 0.0))
  if name == "adamw":
    return optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=wd, mask=mask)
  if name == "adafactor":
    # Absolute learning rates (like AdamW) and no internal clipping: the
    # config's global-norm clip applies to every optimizer alike.
    return optax.adafactor(schedule, multiply_by_parameter_scale=False, clipping_threshold=None,
                           weight_decay_rate=wd or None, weight_decay_mask=mask if wd else None)
  if name == "sgd":
    return optax.chain(optax.add_decayed_weights(wd, mask) if wd else optax.identity(),
                       optax.sgd(schedule, momentum=float(opt.b1) or None))
  raise UserError(f"optimizer name must be one of {', '.join(OPTIMIZERS)}, got: {name}")


def _single(opt: ml_collections.ConfigDict, total_steps: int):
  schedule = learning_rate_schedule(opt, total_steps)
  parts = []
  if float(opt.get("grad_clip_norm", 0.0)) > 0:
    parts.append(optax.clip_by_global_norm(float(opt.grad_clip_norm)))
  parts.append(_base(opt, schedule))
  return optax.chain(*parts), schedule


def optimizer_config(config, label: str | None = None) -> ml_collections.ConfigDict:
  """`config.optimizer`, overridden by `config.optimizers[label]` for a label."""
  opt = ml_collections.ConfigDict(config.optimizer.to_dict())
  if label is not None:
    for k, v in config.optimizers[label].items():
      with opt.unlocked():
        opt[k] = v
  return opt


FROZEN = "__frozen__"  # the label of frozen leaves inside multi_transform


def make_optimizer(config, labels: PyTree | None = None, frozen: PyTree | None = None
                   ) -> tuple[optax.GradientTransformation, dict[str, Schedule]]:
  """Returns (optimizer, {name: learning-rate schedule}).

  With `labels` (a tree of strings like `params`), each label gets its own
  optimizer from `config.optimizers[label]` (missing fields from
  `config.optimizer`) with its own clipping; schedules are keyed by label.
  `frozen` (a tree of bools like `params`, from `Task.frozen_params`) marks
  leaves that are never updated: no step, no weight decay, no optimizer
  state, and no share in gradient clipping.
  """
  total = int(config.total_steps)
  if frozen is not None and not any(jax.tree.leaves(frozen)):
    frozen = None
  if labels is None and frozen is None:
    tx, schedule = _single(config.optimizer, total)
    return tx, {"": schedule}
  if labels is None:
    labels = jax.tree.map(lambda _: "", frozen)
  if frozen is not None:
    labels = jax.tree.map(lambda l, f: FROZEN if f else l, labels, frozen)
  used = sorted(set(jax.tree.leaves(labels)) - {FROZEN})
  missing = [l for l in used if l and l not in config.optimizers]
  if missing:
    raise UserError(f"the task's optimizer labels {missing} have no entry in config.optimizers "
                    f"(has: {sorted(config.optimizers)})")
  transforms, schedules = {}, {}
  for label in used:
    opt = optimizer_config(config, label) if label else config.optimizer
    transforms[label], schedules[label] = _single(opt, total)
  if frozen is not None:
    transforms[FROZEN] = optax.set_to_zero()
  return optax.multi_transform(transforms, labels), schedules
