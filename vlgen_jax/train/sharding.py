"""Logical axis names -> `NamedSharding`s on the mesh, and global batches.

Params come out of `Task.init` boxed with logical names (`nn.Partitioned`);
`config.logical_axis_rules` maps those names to mesh axes. Optimizer state
leaves that mirror a param (same path suffix and shape, e.g. Adam moments)
take that param's sharding; anything else (step counters, Adafactor's
factored row/column statistics) is replicated.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from vlgen_jax.errors import UserError

PyTree = Any
BATCH_AXES = ("data", "fsdp")


def logical_axis_rules(config) -> tuple[tuple[str, Any], ...]:
  """`config.logical_axis_rules` as a tuple of (name, mesh axes) pairs."""
  rules = []
  for name, axes in config.logical_axis_rules:
    if isinstance(axes, list):
      axes = tuple(axes)
    rules.append((name, axes))
  return tuple(rules)


@contextlib.contextmanager
def mesh_context(mesh: jax.sharding.Mesh, rules) -> Iterator[None]:
  """Mesh and logical rules in scope, so `nn.with_logical_constraint` works
  while tracing the model under `jax.jit`."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def logical_specs(boxed: PyTree) -> PyTree:
  """PartitionSpecs of logical names for a boxed tree (P() for unboxed leaves)."""
  return nn.get_partition_spec(boxed)


def unbox(tree: PyTree) -> PyTree:
  """Plain arrays (or ShapeDtypeStructs) from a boxed tree, without sharding
  constraints (which need a trace and concrete shardings)."""
  is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)  # noqa: E731
  return jax.tree.map(lambda x: x.unbox(apply_constraint=False) if is_box(x) else x, tree,
                      is_leaf=is_box)


def logical_to_shardings(specs: PyTree, mesh: jax.sharding.Mesh, rules) -> PyTree:
  """Logical PartitionSpecs -> NamedShardings under `rules`."""
  return nn.logical_to_mesh_sharding(specs, mesh, rules)


def check_divisible(abstract: PyTree, shardings: PyTree, what: str) -> None:
  """UserError naming the first array whose dims do not split evenly over
  the mesh axes its sharding assigns (checked before compiling anything)."""
  flat = jax.tree_util.tree_flatten_with_path(abstract)[0]
  flat_shardings = jax.tree_util.tree_leaves(
      shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
  for (path, leaf), sharding in zip(flat, flat_shardings):
    if not isinstance(sharding, NamedSharding):
      continue
    for dim, (size, axes) in enumerate(zip(leaf.shape, tuple(sharding.spec))):
      axes = () if axes is None else (axes if isinstance(axes, tuple) else (axes,))
      parts = 1
      for a in axes:
        parts *= sharding.mesh.shape[a]
      if size % parts:
        name = jax.tree_util.keystr(path, simple=True, separator="/")
        raise UserError(f"{what} {name} {tuple(leaf.shape)}: dim {dim} ({size}) does not split "
                        f"over mesh axes {'*'.join(axes)}={parts}; change config.mesh or "
                        f"config.logical_axis_rules")


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """The leading (batch) dim split over data and fsdp; other dims replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


def _path_key(path) -> tuple[str, ...]:
  return tuple(str(k) for k in path)


def mirror_shardings(tree: PyTree, params: PyTree, param_shardings: PyTree,
                     mesh: jax.sharding.Mesh) -> PyTree:
  """Shardings for a tree derived from `params` (optimizer state).

  A leaf whose key path ends with a param's key path and has that param's
  shape gets the param's sharding; other leaves are replicated.
  """
  by_path = {}
  flat_params = jax.tree_util.tree_flatten_with_path(params)[0]
  flat_shardings = jax.tree_util.tree_leaves(
      param_shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
  for (path, leaf), sharding in zip(flat_params, flat_shardings):
    by_path[_path_key(path)] = (tuple(leaf.shape), sharding)

  def pick(path, leaf):
    key = _path_key(path)
    shape = tuple(getattr(leaf, "shape", ()))
    for start in range(len(key)):
      hit = by_path.get(key[start:])
      if hit is not None and hit[0] == shape:
        return hit[1]
    return replicated(mesh)

  return jax.tree_util.tree_map_with_path(pick, tree)


def shard_shapes(array: jax.Array) -> list[tuple[int, ...]]:
  """Shapes of this process's shards of `array` (for inspection and tests)."""
  return [tuple(s.data.shape) for s in array.addressable_shards]


def process_data_shard(mesh: jax.sharding.Mesh, global_size: int) -> tuple[int, int, int]:
  """Which rows of a global batch this process feeds: (shard index, shard
  count, rows per process). Processes whose devices hold the same rows (e.g.
  tensor parallelism across hosts) share a shard index and read the same data."""
  ranges = {}
  for device, index in batch_sharding(mesh).devices_indices_map((global_size,)).items():
    start, stop, _ = index[0].indices(global_size)
    lo, hi = ranges.get(device.process_index, (global_size, 0))
    ranges[device.process_index] = (min(lo, start), max(hi, stop))
  distinct = sorted(set(ranges.values()))
  sizes = {hi - lo for lo, hi in distinct}
  if len(sizes) != 1 or sum(sizes) * len(distinct) != global_size:
    raise ValueError(f"processes hold uneven or overlapping batch rows: {ranges}")
  mine = ranges[jax.process_index()]
  return distinct.index(mine), len(distinct), mine[1] - mine[0]


def to_global(host_array: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
  """A host array that every process holds whole -> a global array laid out
  by `sharding` (each device takes its slice)."""
  host_array = np.asarray(host_array)
  return jax.make_array_from_callback(host_array.shape, sharding, lambda index: host_array[index])


def to_host(array: jax.Array) -> np.ndarray:
  """A global array, whole, on every process (collective with several)."""
  if jax.process_count() == 1:
    return np.asarray(jax.device_get(array))
  return np.asarray(multihost_utils.process_allgather(array, tiled=True))


def global_batch(local: dict, mesh: jax.sharding.Mesh, global_size: int) -> dict:
  """A process-local batch (numpy, this process's rows from
  `process_data_shard`) -> global jax arrays split over data and fsdp."""
  sharding = batch_sharding(mesh)

  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_process_local_data(sharding, x, (global_size,) + x.shape[1:])

  return jax.tree.map(put, local)


def abstract_batch(local: dict, mesh: jax.sharding.Mesh, global_size: int) -> dict:
  """ShapeDtypeStructs of the global batch `global_batch` builds from `local`."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct((global_size,) + tuple(np.shape(x)[1:]),
                                     np.asarray(x).dtype, sharding=sharding), local)


def with_shardings(abstract: PyTree, shardings: PyTree) -> PyTree:
  """ShapeDtypeStructs carrying `shardings` (restore targets)."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)

