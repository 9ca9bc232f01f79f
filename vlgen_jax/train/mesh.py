"""Device mesh from the config, and multi-host start-up.

`config.mesh` gives the axis sizes within a slice (ICI) and `config.dcn_mesh`
across slices (DCN); -1 fills an axis with the remaining devices. With several
slices the mesh is a hybrid one (`mesh_utils.create_hybrid_device_mesh`), so
the axes that cross slices are the outer ones.

Multi-host start-up (`maybe_initialize_distributed`), decided from the
environment:
  * VLGEN_COORDINATOR_ADDRESS (host:port), VLGEN_NUM_PROCESSES and
    VLGEN_PROCESS_ID: explicit settings, e.g. several local CPU processes
    (127.0.0.1:PORT). CPU collectives then use gloo.
  * SLURM with more than one task (SLURM_NTASKS > 1), or a multi-host Cloud TPU
    VM slice (TPU_WORKER_HOSTNAMES lists several workers), or
    VLGEN_DISTRIBUTED=1: `jax.distributed.initialize()` detects the cluster.
  * otherwise a single process: nothing to do.
"""
from __future__ import annotations

import math
import os
from typing import Mapping, Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils

from vlgen_jax.errors import UserError
from vlgen_jax.train.defaults import MESH_AXES

ENV_COORDINATOR = "VLGEN_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "VLGEN_NUM_PROCESSES"
ENV_PROCESS_ID = "VLGEN_PROCESS_ID"
ENV_DISTRIBUTED = "VLGEN_DISTRIBUTED"


def maybe_initialize_distributed(environ: Mapping[str, str] | None = None) -> bool:
  """Calls `jax.distributed.initialize` when this is one of several processes.

  Must run before anything touches the devices. Returns True when it
  initialised (or had already initialised) a multi-process run.
  """
  env = os.environ if environ is None else environ
  if jax.distributed.is_initialized():
    return True
  if env.get(ENV_COORDINATOR):
    missing = [k for k in (ENV_NUM_PROCESSES, ENV_PROCESS_ID) if not env.get(k)]
    if missing:
      raise UserError(f"{ENV_COORDINATOR} is set but {' and '.join(missing)} is not")
    try:
      num_processes, process_id = int(env[ENV_NUM_PROCESSES]), int(env[ENV_PROCESS_ID])
    except ValueError:
      raise UserError(f"{ENV_NUM_PROCESSES} and {ENV_PROCESS_ID} must be integers") from None
    if not 0 <= process_id < num_processes:
      raise UserError(f"{ENV_PROCESS_ID}={process_id} is not in [0, {num_processes})")
    # CPU processes exchange data through gloo (the in-process default cannot
    # cross process boundaries).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=env[ENV_COORDINATOR],
                               num_processes=num_processes, process_id=process_id)
    return True
  slurm = int(env.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_JOB_ID" in env
  tpu_pod = len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1
  if slurm or tpu_pod or env.get(ENV_DISTRIBUTED) == "1":
    jax.distributed.initialize()
    return True
  return False


def parse_mesh(text: str, base: Mapping[str, int] | None = None) -> dict[str, int]:
  """"data=2,fsdp=4" -> `base` (default: every axis 1) with those sizes set."""
  sizes = dict(base) if base is not None else {a: 1 for a in MESH_AXES}
  for item in (p.strip() for p in text.split(",")):
    if not item:
      continue
    name, sep, value = item.partition("=")
    name = name.strip()
    if not sep or name not in MESH_AXES:
      raise UserError(f"--mesh items look like data=N,fsdp=N,tensor=N; got {item!r}")
    try:
      sizes[name] = int(value)
    except ValueError:
      raise UserError(f"--mesh size of {name} must be an integer, got {value!r}") from None
  return sizes


def resolve_axes(sizes: Mapping[str, int], total: int, what: str) -> tuple[int, ...]:
  """Axis sizes in MESH_AXES order with a -1 filled so the product is `total`."""
  unknown = sorted(set(sizes) - set(MESH_AXES))
  if unknown:
    raise UserError(f"{what} has unknown axes {unknown}; axes are {', '.join(MESH_AXES)}")
  shape = [int(sizes.get(a, 1)) for a in MESH_AXES]
  fill = [i for i, s in enumerate(shape) if s == -1]
  if len(fill) > 1 or any(s == 0 or s < -1 for s in shape):
    raise UserError(f"{what} sizes must be positive with at most one -1, got {_fmt(shape)}")
  known = math.prod(s for s in shape if s != -1)
  if fill:
    if total % known:
      raise UserError(f"{what} {_fmt(shape)}: {total} devices are not divisible by {known}")
    shape[fill[0]] = total // known
  return tuple(shape)


def _fmt(shape: Sequence[int]) -> str:
  return ",".join(f"{a}={s}" for a, s in zip(MESH_AXES, shape))


def mesh_shapes(config, num_devices: int, num_slices: int = 1) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """(ICI shape, DCN shape) in MESH_AXES order, validated against the devices."""
  dcn = resolve_axes(config.get("dcn_mesh", {}) or {}, num_slices, "config.dcn_mesh")
  if math.prod(dcn) != num_slices:
    raise UserError(f"config.dcn_mesh {_fmt(dcn)} spans {math.prod(dcn)} slices, "
                    f"but the devices form {num_slices} slice(s)")
  per_slice = num_devices // num_slices
  ici = resolve_axes(config.mesh, per_slice, "config.mesh")
  if math.prod(ici) != per_slice:
    where = f" per slice ({num_slices} slices)" if num_slices > 1 else ""
    raise UserError(f"config.mesh {_fmt(ici)} needs {math.prod(ici)} devices, "
                    f"but {per_slice} devices are available{where}")
  return ici, dcn


def num_slices_of(devices: Sequence[jax.Device]) -> int:
  return len({getattr(d, "slice_index", 0) for d in devices})


def create_mesh(config, devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """The (data, fsdp, tensor) mesh over `devices` (default: all devices)."""
  devices = list(jax.devices() if devices is None else devices)
  slices = num_slices_of(devices)
  ici, dcn = mesh_shapes(config, len(devices), slices)
  if slices > 1:
    grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices, allow_split_physical_axes=True)
  elif len(devices) == 1 or devices[0].platform == "cpu":
    # CPU devices have no physical topology to respect.
    grid = np.asarray(devices, dtype=object).reshape(ici)
  else:
    grid = mesh_utils.create_device_mesh(ici, devices, allow_split_physical_axes=True)
  return jax.sharding.Mesh(grid, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def data_parallel_size(mesh: jax.sharding.Mesh) -> int:
  """Number of distinct batch shards: the batch is split over data and fsdp."""
  return mesh.shape["data"] * mesh.shape["fsdp"]
