"""`vlgen model-info`: size, FLOPs and per-device memory of a t2i config, abstractly.

Nothing is allocated and no accelerator is needed: params and optimizer
state come from `jax.eval_shape`, shardings from the config's logical axis
rules on a `jax.sharding.AbstractMesh` of the requested shape, so a 20B
model on a 1024-chip mesh is sized on a laptop in seconds.
"""
from __future__ import annotations

import json
import math
from typing import Any, Mapping

from vlgen_jax.errors import UserError
from vlgen_jax.train.defaults import MESH_AXES

HELP = "Parameter counts, training FLOPs and per-device param/optimizer memory of a t2i config."


def add_arguments(parser) -> None:
  parser.add_argument("--config", required=True, help="config file, e.g. configs/parti.py:3b")
  parser.add_argument("--mesh", default=None,
                      help="mesh axis sizes, e.g. data=8,fsdp=16,tensor=4 (default: the config's "
                           "mesh times dcn_mesh); at most one -1, filled from --devices")
  parser.add_argument("--devices", type=int, default=None,
                      help="device count that fills a -1 mesh axis (default: this host's)")
  parser.add_argument("--json", action="store_true", help="print one JSON object")


def config_mesh(config) -> dict[str, int]:
  """The config's mesh: ICI sizes times DCN sizes (-1 kept)."""
  ici, dcn = config.get("mesh", {}) or {}, config.get("dcn_mesh", {}) or {}
  sizes = {}
  for a in MESH_AXES:
    i, d = int(ici.get(a, 1)), int(dcn.get(a, 1))
    sizes[a] = -1 if -1 in (i, d) else i * d
  return sizes


def resolve_mesh(sizes: Mapping[str, int], devices: int | None) -> dict[str, int]:
  """Fills one -1 axis so the mesh covers `devices` (default: this host's)."""
  if devices is not None and devices < 1:
    raise UserError(f"--devices must be >= 1, got {devices}")
  if devices is None and -1 not in sizes.values():
    devices = math.prod(sizes.values())
  from vlgen_jax.train import mesh as mesh_lib  # jax: not at import (`vlgen --help`)
  if devices is None:
    devices = len(mesh_lib.jax.devices())
  shape = mesh_lib.resolve_axes(sizes, devices, "--mesh")
  if math.prod(shape) != devices:
    raise UserError(f"mesh {dict(sizes)} has {math.prod(shape)} devices, not --devices={devices}")
  return dict(zip(MESH_AXES, shape))


def _shard_bytes(abstract, sharding, mesh_sizes: Mapping[str, int]) -> tuple[int, bool]:
  """Bytes of one device's shard (ceil-divided) and whether the split is uneven."""
  spec = tuple(sharding.spec) + (None,) * (len(abstract.shape) - len(sharding.spec))
  shard, uneven = [], False
  for dim, axes in zip(abstract.shape, spec):
    axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    parts = math.prod(mesh_sizes[a] for a in axes)
    uneven |= dim % parts != 0
    shard.append(-(-dim // parts))
  return math.prod(shard) * abstract.dtype.itemsize, uneven


def model_info(config, mesh_sizes: Mapping[str, int]) -> dict[str, Any]:
  """Counts, FLOPs and per-device bytes for `config` on a mesh of `mesh_sizes`."""
  import jax
  import jax.numpy as jnp
  from jax.sharding import AbstractMesh, AxisType

  from vlgen_jax.train.accounting import forward_flops, param_counts
  from vlgen_jax.train import optimizer as optimizer_lib
  from vlgen_jax.train import sharding as sharding_lib
  from vlgen_jax.tasks import build_task

  if config.get("task") != "t2i":
    raise UserError(f"model-info sizes t2i configs; this config has task={config.get('task')!r}")
  task = build_task(config)
  spec = task.spec
  batch = {"text_ids": jax.ShapeDtypeStruct((1, spec.text_length), jnp.int32),
           "image_tokens": jax.ShapeDtypeStruct((1, spec.num_image_tokens), jnp.int32)}
  # The model's own init, not the task's: sizes need no data (the task would
  # read appearance features from a token dataset, values that do not matter here).
  boxed = jax.eval_shape(lambda key, text, image: task.model.init({"params": key}, text, image)[
      "params"], jax.random.key(0), batch["text_ids"], batch["image_tokens"])
  params = sharding_lib.unbox(boxed)
  tx, _ = optimizer_lib.make_optimizer(config, task.optimizer_labels(params),
                                       task.frozen_params(params))
  opt_state = jax.eval_shape(tx.init, params)

  mesh = AbstractMesh(tuple(mesh_sizes[a] for a in MESH_AXES), MESH_AXES,
                      axis_types=(AxisType.Auto,) * len(MESH_AXES))
  rules = sharding_lib.logical_axis_rules(config)
  param_shardings = sharding_lib.logical_to_shardings(sharding_lib.logical_specs(boxed), mesh, rules)
  opt_shardings = sharding_lib.mirror_shardings(opt_state, params, param_shardings, mesh)

  def total_bytes(tree, shardings):
    leaves = jax.tree.leaves(tree)
    shards = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
    sizes = [_shard_bytes(a, s, mesh_sizes) for a, s in zip(leaves, shards)]
    return sum(b for b, _ in sizes), sum(u for _, u in sizes)

  param_bytes, uneven_params = total_bytes(params, param_shardings)
  opt_bytes, uneven_opt = total_bytes(opt_state, opt_shardings)
  fwd = forward_flops(spec)
  counts = dict(param_counts(boxed))
  return {
      "params": counts,
      "flops_per_example": {"train": 3.0 * sum(fwd.values()),
                            "forward": {k: v for k, v in fwd.items()}},
      "tokens_per_example": {"text": spec.text_length, "image": spec.num_image_tokens},
      "vocab": {"text": spec.text_vocab_size, "text_padded": spec.text_vocab_padded,
                "image_codes": spec.image_vocab_size, "image_padded": spec.image_vocab_padded},
      "mesh": dict(mesh_sizes),
      "devices": math.prod(mesh_sizes.values()),
      "optimizer": config.optimizer.get("name", "adamw"),
      "bytes_per_device": {"params": param_bytes, "optimizer": opt_bytes,
                           "total": param_bytes + opt_bytes},
      "unevenly_split_leaves": uneven_params + uneven_opt,
  }


def _human(n: float, unit: str = "") -> str:
  for scale, suffix in ((1e12, "T"), (1e9, "B" if not unit else "G"), (1e6, "M"), (1e3, "K")):
    if abs(n) >= scale:
      return f"{n / scale:.2f}{suffix}{unit}"
  return f"{n:.0f}{unit}"


def _bytes(n: int) -> str:
  for scale, unit in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
    if n >= scale:
      return f"{n / scale:.2f} {unit}"
  return f"{n} B"


def format_table(info: Mapping[str, Any], title: str = "") -> str:
  p, f, b = info["params"], info["flops_per_example"], info["bytes_per_device"]
  mesh = ", ".join(f"{a}={s}" for a, s in info["mesh"].items())
  rows = [
      ("params (total)", f"{p['total']:,}  ({_human(p['total'])})"),
      ("params (non-embedding)", f"{p['non_embedding']:,}  ({_human(p['non_embedding'])})"),
      ("params (embedding+head)", f"{p['embedding']:,}  ({_human(p['embedding'])})"),
      ("  encoder / decoder", f"{_human(p['encoder'])} / {_human(p['decoder'])}"),
      ("tokens per example", f"text {info['tokens_per_example']['text']}, "
                             f"image {info['tokens_per_example']['image']}"),
      ("train FLOPs per example", f"{f['train']:.3e}  ({_human(f['train'], 'FLOP')})"),
      ("mesh", f"{mesh}  ({info['devices']} device{'s' if info['devices'] != 1 else ''})"),
      ("params per device", _bytes(b["params"])),
      (f"optimizer ({info['optimizer']}) per device", _bytes(b["optimizer"])),
      ("params + optimizer per device", _bytes(b["total"])),
  ]
  if info["unevenly_split_leaves"]:
    rows.append(("arrays not divisible by the mesh",
                 f"{info['unevenly_split_leaves']} (the trainer refuses this mesh)"))
  width = max(len(k) for k, _ in rows)
  lines = [title] if title else []
  lines += [f"{k.ljust(width)}  {v}" for k, v in rows]
  return "\n".join(lines)


def run(args) -> int:
  from vlgen_jax.config import load_config
  config = load_config(args.config, getattr(args, "config_overrides", ()))
  from vlgen_jax.train.mesh import parse_mesh
  sizes = parse_mesh(args.mesh) if args.mesh else config_mesh(config)
  sizes = resolve_mesh(sizes, args.devices)
  info = model_info(config, sizes)
  if args.json:
    print(json.dumps(dict(info, config=args.config), sort_keys=True))
  else:
    print(format_table(info, title=f"model-info {args.config}"))
  return 0
