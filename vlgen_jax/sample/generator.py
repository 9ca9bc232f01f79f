"""A trained text-to-image run, loaded for sampling: captions -> uint8 images.

`Generator.load(workdir)` finds the run (a `vlgen train` t2i workdir, or a
`vlgen demo` workdir holding one under `t2i/`), restores params only (no
optimizer state) sharded over a sampling mesh, and loads the run's
SentencePiece model and VQ decoder. `generate(...)` tokenizes, samples image
tokens in fixed-size batches (one compile) and decodes them to pixels.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable, Sequence

import numpy as np

from vlgen_jax.errors import UserError

T2I_SUBDIR = "t2i"   # where `vlgen demo` keeps the text-to-image run
VQ_SUBDIR = "vq"     # ... and the VQ tokenizer run


def _is_run(path: str) -> bool:
  return any(os.path.exists(os.path.join(path, *p)) for p in (("config.json",),
                                                             ("export", "config.json")))


def find_t2i_run(workdir: str) -> str:
  """The text-to-image run in `workdir` (itself, or `workdir/t2i`)."""
  if not os.path.isdir(workdir):
    raise UserError(f"workdir not found: {workdir}")
  for cand in (workdir, os.path.join(workdir, T2I_SUBDIR)):
    if _is_run(cand):
      from vlgen_jax.train import checkpoint
      if checkpoint.load_config(cand).get("task") == "t2i":
        return cand
  raise UserError(f"no text-to-image run in {workdir} (expected a t2i train workdir or "
                  f"{os.path.join(workdir, T2I_SUBDIR)})")


def run_config(workdir: str):
  """The config of the text-to-image run in `workdir` (cheap: no params)."""
  from vlgen_jax.train import checkpoint
  return checkpoint.load_config(find_t2i_run(workdir))


def find_tokenizer(run: str, config) -> str:
  from vlgen_jax.text.tokenizer import TOKENIZER_ASSET
  candidates = [os.path.join(run, "export", "assets", TOKENIZER_ASSET),
                config.get("data", {}).get("tokenizer", "") or ""]
  for path in candidates:
    if path and os.path.exists(path):
      return path
  raise UserError(f"the run in {run} has no text tokenizer (looked for "
                  f"export/assets/{TOKENIZER_ASSET} and config.data.tokenizer)")


def find_vq_run(run: str, config, override: str | None = None) -> str:
  """The VQ run whose codes the t2i model predicts: --vq-workdir, the config's
  `vq_workdir`, the token dataset's metadata, or the demo layout."""
  candidates = [override, config.get("vq_workdir", None)]
  data_path = config.get("data", {}).get("data_dir", "")
  if data_path and os.path.exists(os.path.join(data_path, "dataset_info.json")):
    from vlgen_jax.data.token_records import read_info
    candidates.append(read_info(data_path)["meta"].get("vq_workdir"))
  candidates.append(os.path.join(os.path.dirname(os.path.abspath(run)), VQ_SUBDIR))
  for path in candidates:
    if path and _is_run(path):
      return path
  raise UserError(f"cannot find the VQ tokenizer run for {run}; pass --vq-workdir")


@dataclasses.dataclass
class Generator:
  run: str
  config: object
  model: object
  params: object
  tokenizer: object
  vq: object
  mesh: object
  param_shardings: object
  rules: tuple
  step: int | None

  @classmethod
  def load(cls, workdir: str, *, step: int | None = None, vq_workdir: str | None = None,
           mesh_overrides: str | None = None) -> "Generator":
    import jax
    import jax.numpy as jnp
    from vlgen_jax.model.spec import ModelSpec
    from vlgen_jax.model.t2i import Model
    from vlgen_jax.text.tokenizer import TextTokenizer
    from vlgen_jax.train import checkpoint, sharding
    from vlgen_jax.train import mesh as mesh_lib
    from vlgen_jax.vq.api import VQTokenizer

    run = find_t2i_run(workdir)
    config = checkpoint.load_config(run)
    with config.unlocked():
      config.mesh.update({"data": -1, "fsdp": 1, "tensor": 1})
      for item in (mesh_overrides or "").split(","):
        if item.strip():
          name, _, size = item.partition("=")
          if name.strip() not in config.mesh or not size.strip().lstrip("-").isdigit():
            raise UserError(f"--mesh must look like data=2,fsdp=1,tensor=4; got {mesh_overrides!r}")
          config.mesh[name.strip()] = int(size)
    spec = ModelSpec.from_config(config)
    model = Model(spec)
    mesh = mesh_lib.create_mesh(config)
    rules = sharding.logical_axis_rules(config)
    abstract = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, spec.text_length), jnp.int32),
                           jnp.zeros((1, spec.num_image_tokens), jnp.int32))["params"])
    shardings = sharding.logical_to_shardings(sharding.logical_specs(abstract), mesh, rules)
    params = checkpoint.load_params(run, step, shardings)
    tokenizer = TextTokenizer.from_file(find_tokenizer(run, config))
    vq = VQTokenizer.from_workdir(find_vq_run(run, config, vq_workdir))
    if vq.num_codes != spec.image_vocab_size or tuple(vq.token_grid) != spec.image_grid:
      raise UserError(f"VQ run has {vq.num_codes} codes on a {vq.token_grid} grid but the "
                      f"t2i model expects {spec.image_vocab_size} on {spec.image_grid}")
    return cls(run=run, config=config, model=model, params=params, tokenizer=tokenizer, vq=vq,
               mesh=mesh, param_shardings=shardings, rules=rules, step=step)

  @property
  def spec(self):
    return self.model.spec

  def empty_caption(self) -> np.ndarray:
    return self.tokenizer.encode_batch([""], self.spec.text_length)[0]

  def sampler(self, options):
    from vlgen_jax.sample import sampler
    return sampler.make_sampler(self.model, options, empty_caption=self.empty_caption(),
                                mesh=self.mesh, param_shardings=self.param_shardings,
                                logical_axis_rules=self.rules)

  def generate(self, prompts: Sequence[str], options, *, seed: int = 0, batch_size: int = 16,
               progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One image per entry of `prompts` (repeat a prompt for several):
    returns (uint8 images (n, H, W, 3), tokens (n, N)). Image i uses key
    (seed, i), so results do not depend on `batch_size`."""
    from vlgen_jax.sample import sampler
    from vlgen_jax.train import sharding
    dp = int(np.prod([self.mesh.shape[a] for a in sharding.BATCH_AXES]))
    batch_size = max(dp, -(-batch_size // dp) * dp)
    text = self.tokenizer.encode_batch(list(prompts), self.spec.text_length)
    fn = self.sampler(options)
    images, tokens = [], []
    for start in range(0, len(prompts), batch_size):
      chunk = text[start:start + batch_size]
      padded, real = sampler.pad_batch(chunk, batch_size)
      keys = sampler.image_keys(seed, start, batch_size)
      out = self._to_host(fn(self.params, self._global(padded), self._global_keys(keys)))[:real]
      tokens.append(out)
      images.append(self.vq.decode_uint8(out.reshape(real, *self.spec.image_grid)))
      if progress:
        progress(real)
    return np.concatenate(images), np.concatenate(tokens)

  # Multi-process: every process holds the whole (small) prompt batch; each
  # device takes its rows; outputs come back to every host.
  def _global(self, host_array):
    import jax
    from vlgen_jax.train import sharding
    s = sharding.batch_sharding(self.mesh)
    return jax.make_array_from_callback(host_array.shape, s, lambda idx: host_array[idx])

  def _global_keys(self, keys):
    import jax
    from vlgen_jax.train import sharding
    return jax.device_put(keys, sharding.batch_sharding(self.mesh)) if jax.process_count() == 1 \
        else jax.random.wrap_key_data(self._global(np.asarray(jax.random.key_data(keys))))

  @staticmethod
  def _to_host(array) -> np.ndarray:
    import jax
    if jax.process_count() == 1:
      return np.asarray(array)
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(array, tiled=True))
