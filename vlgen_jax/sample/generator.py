"""A trained text-to-image run, loaded for sampling: captions -> uint8 images.

`Generator.load(workdir)` finds the run (a `vlgen train` t2i workdir, or a
`vlgen demo` workdir naming one), restores params only (no optimizer state)
sharded over a sampling mesh, and loads the SentencePiece model and VQ
decoder the run records (vlgen_jax/runs.py). `generate(...)` tokenizes,
samples image tokens in fixed-size batches (one compile) and decodes them to
pixels.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from vlgen_jax import runs
from vlgen_jax.errors import UserError


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
  _samplers: dict = dataclasses.field(default_factory=dict, repr=False)

  @classmethod
  def load(cls, workdir: str, *, step: int | None = None, vq_workdir: str | None = None,
           mesh_overrides: str | None = None, dtype: str | None = None,
           quantize: str = "none") -> "Generator":
    """`dtype` overrides the run's compute dtype; "bfloat16" also stores the
    weight matrices in bfloat16 (half the bytes each decode step reads).
    `quantize="int8"`: int8 weight-only decoder matmuls (sample/quantize.py)."""
    import jax
    import jax.numpy as jnp
    from vlgen_jax.model.spec import ModelSpec
    from vlgen_jax.tasks.families import get_family
    from vlgen_jax.text.tokenizer import TextTokenizer
    from vlgen_jax.train import checkpoint, sharding
    from vlgen_jax.train import mesh as mesh_lib
    from vlgen_jax.vq.api import VQTokenizer

    run = runs.find_run(workdir, "t2i")
    config = checkpoint.load_config(run)
    with config.unlocked():
      # Sampling mesh: data parallel over every device unless --mesh says otherwise.
      config.mesh.update(mesh_lib.parse_mesh(mesh_overrides or "",
                                             {"data": -1, "fsdp": 1, "tensor": 1}))
      if dtype:
        config.dtype = dtype
    spec = ModelSpec.from_config(config)
    model = get_family(spec.family).build_model(spec)
    mesh = mesh_lib.create_mesh(config)
    rules = sharding.logical_axis_rules(config)
    abstract = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, spec.text_length), jnp.int32),
                           jnp.zeros((1, spec.num_image_tokens), jnp.int32))["params"])
    shardings = sharding.logical_to_shardings(sharding.logical_specs(abstract), mesh, rules)
    if step is None:  # the newest usable export or checkpoint, as training restores
      step, params = checkpoint.newest_usable_params(run, shardings)
    else:
      params = checkpoint.load_params(run, step, shardings)
    if spec.compute_dtype() == jnp.bfloat16:
      # Matrices only: norm scales and biases stay float32 (norms compute in float32).
      params = jax.jit(lambda p: jax.tree.map(
          lambda a: a.astype(jnp.bfloat16) if a.ndim >= 2 else a, p), out_shardings=shardings)(params)
    if quantize == "int8":
      from vlgen_jax.sample.quantize import quantize_int8
      params = jax.jit(quantize_int8)(params)
      # New leaves (scales): every array keeps the sharding XLA gave it.
      shardings = jax.tree.map(lambda a: a.sharding, params)
    tokenizer_path = runs.tokenizer_of(run, config)
    tokenizer = TextTokenizer.from_file(tokenizer_path)
    if tokenizer.vocab_size > spec.text_vocab_size:
      raise UserError(f"text tokenizer {tokenizer_path} has {tokenizer.vocab_size} pieces but "
                      f"the t2i run {run} embeds {spec.text_vocab_size}")
    vq_run = runs.vq_of(run, config, vq_workdir)
    vq = VQTokenizer.from_workdir(vq_run)
    if vq.num_codes != spec.image_vocab_size or tuple(vq.token_grid) != spec.image_grid:
      raise UserError(f"VQ run {vq_run} has {vq.num_codes} codes on a {tuple(vq.token_grid)} "
                      f"grid but the t2i run {run} predicts {spec.image_vocab_size} codes on "
                      f"{spec.image_grid}")
    return cls(run=run, config=config, model=model, params=params, tokenizer=tokenizer, vq=vq,
               mesh=mesh, param_shardings=shardings, rules=rules, step=step)

  @property
  def spec(self):
    return self.model.spec

  def empty_caption(self) -> np.ndarray:
    return self.tokenizer.encode_batch([""], self.spec.text_length)[0]

  def sampler(self, options, *, edit: bool = False):
    """The jitted sampler for `options`, built once: `vlgen sample` calls
    `generate` once per batch, and a new jit would trace and compile again."""
    from vlgen_jax.sample import sampler
    key = (repr(options), edit)
    if key not in self._samplers:
      self._samplers[key] = sampler.make_sampler(
          self.model, options, empty_caption=self.empty_caption(), edit=edit, mesh=self.mesh,
          param_shardings=self.param_shardings, logical_axis_rules=self.rules)
    return self._samplers[key]

  def generate(self, prompts: Sequence[str], options, *, seed: int = 0, batch_size: int = 16,
               progress: Callable[[int], None] | None = None, first_index: int = 0
               ) -> tuple[np.ndarray, np.ndarray]:
    """One image per entry of `prompts` (repeat a prompt for several):
    returns (uint8 images (n, H, W, 3), tokens (n, N)). Image i uses key
    (seed, first_index + i), so results do not depend on `batch_size`, and a
    long run can be generated in pieces."""
    return self._run(prompts, options, seed=seed, batch_size=batch_size, progress=progress,
                     first_index=first_index)

  def edit(self, prompts: Sequence[str], known: np.ndarray, keep: np.ndarray, options, *,
           seed: int = 0, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Like `generate`, keeping `known` (n, N) image tokens where `keep` (n, N)
    is True and regenerating the rest, the family's way (`Family.editing`)."""
    n = self.spec.num_image_tokens
    known, keep = np.asarray(known, np.int32), np.asarray(keep, bool)
    if known.shape != (len(prompts), n) or keep.shape != known.shape:
      raise ValueError(f"known/keep must be ({len(prompts)}, {n}), got {known.shape}, {keep.shape}")
    return self._run(prompts, options, seed=seed, batch_size=batch_size, known=known, keep=keep)

  def _run(self, prompts, options, *, seed, batch_size, progress=None, first_index=0,
           known=None, keep=None):
    from vlgen_jax.sample import sampler
    batch_size = self._device_batch(batch_size)
    text = self.tokenizer.encode_batch(list(prompts), self.spec.text_length)
    edit = keep is not None
    fn = self.sampler(options, edit=edit)
    images, tokens = [], []
    for start in range(0, len(prompts), batch_size):
      chunk = text[start:start + batch_size]
      padded, real = sampler.pad_batch(chunk, batch_size)
      keys = sampler.image_keys(seed, first_index + start, batch_size)
      args = [self.to_global(padded), self._global_keys(keys)]
      if edit:
        args += [self.to_global(sampler.pad_batch(known[start:start + batch_size], batch_size)[0]),
                 self.to_global(sampler.pad_batch(keep[start:start + batch_size], batch_size)[0])]
      out = self.to_host(fn(self.params, *args))[:real]
      tokens.append(out)
      images.append(self.vq.decode_uint8(out.reshape(real, *self.spec.image_grid)))
      if progress:
        progress(real)
    return np.concatenate(images), np.concatenate(tokens)

  def token_log_probs(self, captions: Sequence[str], tokens: np.ndarray, *,
                      batch_size: int = 64) -> np.ndarray:
    """(n, N) fp32 log p(token | caption, the rest as the family sees it) of
    image tokens (n, N) under caption i (`Family.token_log_probs`: the tokens
    before it, or a masked family's pseudo-likelihood), in fixed-size batches."""
    import jax
    from vlgen_jax.sample import sampler
    from vlgen_jax.tasks.families import get_family
    from vlgen_jax.train import sharding
    if "token_log_probs" not in self._samplers:
      family = get_family(self.spec.family)
      rows = sharding.batch_sharding(self.mesh)
      fn = jax.jit(lambda p, t, x: family.token_log_probs(self.model, p, t, x),
                   in_shardings=(self.param_shardings, rows, rows), out_shardings=rows)
      self._samplers["token_log_probs"] = fn
    fn = self._samplers["token_log_probs"]
    batch_size = self._device_batch(batch_size)
    text = self.tokenizer.encode_batch(list(captions), self.spec.text_length)
    tokens = np.asarray(tokens, np.int32)
    out = []
    for start in range(0, len(text), batch_size):
      t, real = sampler.pad_batch(text[start:start + batch_size], batch_size)
      x, _ = sampler.pad_batch(tokens[start:start + batch_size], batch_size)
      with sharding.mesh_context(self.mesh, self.rules):
        out.append(self.to_host(fn(self.params, self.to_global(t), self.to_global(x)))[:real])
    return np.concatenate(out) if out else np.zeros((0, self.spec.num_image_tokens), np.float32)

  def example_bytes(self) -> int:
    """A rough upper bound of the device memory one image takes while it is
    sampled and decoded (float32): self- and cross-attention caches of every
    decoder layer, doubled for classifier-free guidance, the logits, and the
    VQ decoder's activations (~64 channels at full resolution)."""
    spec = self.spec
    layers = int(self.config.model.decoder_layers)
    caches = 2 * layers * (spec.num_image_tokens + spec.text_length) * int(spec.d_model)
    logits = int(spec.image_vocab_size)
    pixels = self.vq.resolution * self.vq.resolution * 64
    return 4 * (2 * (caches + logits) + pixels)

  def max_batch_size(self, budget_bytes: int | None = None) -> int:
    """The largest batch (a multiple of the data-parallel size) whose
    estimated memory fits in `budget_bytes` (default: half of a device's
    memory limit where the backend reports one, else 2 GiB in all)."""
    dp = self.data_parallel_size
    if budget_bytes is None:
      import jax
      # One of this process's devices: others' stats are not readable.
      local = next(d for d in self.mesh.devices.flat if d.process_index == jax.process_index())
      stats = local.memory_stats() or {}
      # A batch is spread over the data-parallel devices (CPU: one host's RAM).
      budget_bytes = stats["bytes_limit"] // 2 * dp if "bytes_limit" in stats else 2 << 30
    return max(dp, budget_bytes // self.example_bytes() // dp * dp)

  # Multi-process: every process holds the whole (small) prompt batch; each
  # device takes its rows; outputs come back to every host.
  @property
  def data_parallel_size(self) -> int:
    from vlgen_jax.train import sharding
    return int(np.prod([self.mesh.shape[a] for a in sharding.BATCH_AXES]))

  def to_global(self, host_array):
    """A host batch (every process holds all of it) split over the batch axes."""
    from vlgen_jax.train import sharding
    return sharding.to_global(host_array, sharding.batch_sharding(self.mesh))

  def _global_keys(self, keys):
    import jax
    return jax.random.wrap_key_data(self.to_global(np.asarray(jax.random.key_data(keys))))

  def _device_batch(self, batch_size: int) -> int:
    """`batch_size` rounded up to a multiple of the data-parallel devices."""
    dp = self.data_parallel_size
    return max(dp, -(-batch_size // dp) * dp)

  @staticmethod
  def to_host(array) -> np.ndarray:
    from vlgen_jax.train import sharding
    return sharding.to_host(array)
