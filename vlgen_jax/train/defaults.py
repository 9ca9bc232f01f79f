"""Fields every trainer config has. Model configs start from `trainer_config()`
and add `task`, `model` and `data` (see configs/*.py)."""
from __future__ import annotations

import ml_collections

# The device mesh's axes, in order: data parallel, fully sharded data
# parallel, tensor parallel (this module imports no jax, so `vlgen --help`
# and `vlgen model-info` can name them without loading it).
MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis name -> mesh axes (MaxText style). None = replicated.
DEFAULT_LOGICAL_AXIS_RULES = (
    # activations
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv", None),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
    # decode caches (layers, batch, length, heads, kv): rows like the batch,
    # heads like the attention projections
    ("cache_batch", ("data", "fsdp")),
    ("cache_length", None),
    ("cache_heads", "tensor"),
    ("cache_kv", None),
    # params
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("layers", None),
    ("norm", None),
    ("conv_in", None),
    ("conv_out", "fsdp"),
    ("codebook", None),
)


def trainer_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = ""  # a name in vlgen_jax.tasks.TASKS

  # Run length (all overridable: --config.total_steps=...).
  c.seed = 0
  c.total_steps = 1000
  c.log_every = 10
  c.eval_every = 500      # 0 disables
  c.eval_steps = 4        # batches per eval-loss pass
  c.checkpoint_every = 500
  c.max_to_keep = 3
  c.async_checkpointing = True

  # Fine-tuning: "RUN" or "RUN:STEP" starts a new run (empty workdir) from
  # that run's params (its export, or checkpoint STEP); the optimizer state,
  # data iterator and step start fresh. Shapes must match the config's. A
  # workdir that has checkpoints resumes from them instead.
  c.init_from = ""

  # Input splits (names the Task understands) and the eval batch size
  # (0 = batch_size).
  c.train_split = "train"
  c.eval_split = "validation"
  c.eval_batch_size = 0

  # Batch: global size over all processes; split into micro-batches scanned
  # with gradient accumulation.
  c.batch_size = 32
  c.micro_batches = 1

  # Mesh: axis sizes within a slice (ICI) and across slices (DCN); -1 fills.
  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
  c.dcn_mesh = ml_collections.ConfigDict({"data": 1, "fsdp": 1, "tensor": 1})
  c.logical_axis_rules = DEFAULT_LOGICAL_AXIS_RULES

  # Numerics: params are always fp32; `dtype` is the compute dtype
  # ("auto" = bfloat16 on accelerators, float32 on CPU).
  c.dtype = "auto"
  c.remat = "none"  # none | full | dots | dots_no_batch
  # A step whose loss or gradient norm is not finite never updates the state;
  # "skip" counts it and goes on, "halt" stops the run (exit status 3).
  c.nan_policy = "skip"

  c.optimizer = ml_collections.ConfigDict({
      "name": "adamw",          # adamw | adafactor | sgd
      "learning_rate": 1e-3,
      "schedule": "cosine",     # cosine | linear | constant
      "warmup_steps": 0,
      "end_lr_ratio": 0.0,      # final lr / peak lr for cosine/linear decay
      "b1": 0.9,
      "b2": 0.95,
      "eps": 1e-8,
      "weight_decay": 0.0,
      # Leaves whose path contains one of these substrings get no weight decay.
      "no_decay": ("norm", "bias", "embedding", "scale"),
      "grad_clip_norm": 1.0,    # 0 disables
  })
  # Per-label optimizers for tasks with several (e.g. VQ generator and
  # discriminator); keys are the labels of Task.optimizer_labels.
  c.optimizers = ml_collections.ConfigDict()

  c.model = ml_collections.ConfigDict()
  c.data = ml_collections.ConfigDict()

  # Fault injection for the reliability tests (docs/reliability.md); all off
  # by default. sigterm_after_step: the trainer sends itself SIGTERM after this
  # step. nan_at_step: this step's loss and gradients become NaN (as in a
  # diverged model). slow_save_seconds: every async checkpoint pauses this long
  # after writing its files and before its atomic commit (so a test can
  # SIGKILL the run while a checkpoint is half-saved).
  c.debug = ml_collections.ConfigDict({
      "sigterm_after_step": 0,
      "nan_at_step": 0,
      "slow_save_seconds": 0.0,
  })
  return c
