"""`ModelSpec`: the validated, hashable hyper-parameters of the text-to-image model.

Configs are mutable `ConfigDict`s; Linen modules want static, hashable
attributes. `ModelSpec.from_config(config)` reads `config.model` (plus the
trainer-level `dtype` and `remat`), checks every field once and turns bad
values into one-line `UserError`s.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from vlgen_jax.errors import UserError

VOCAB_MULTIPLE = 128  # Vocabularies are padded to this so `vocab` shards evenly.

NORMS = ("rmsnorm", "layernorm")
# relu2 (squared ReLU, Primer) trains like gelu here and its backward pass is
# ~3x cheaper on XLA:CPU (no transcendental), which matters for CPU recipes.
MLPS = ("gelu", "swiglu", "relu2")
IMAGE_POSITIONS = ("learned_2d", "rope_2d")
TEXT_POSITIONS = ("learned", "rope")
ATTENTION_IMPLS = ("xla", "cudnn")
# How image codes are embedded and scored: a learned row per code, linear
# maps of each code's mean training patch, or (the captioner's encoder only)
# of each position's patch of the VQ decoder's rendering
# (vlgen_jax/model/code_embedding.py).
CODE_EMBEDDINGS = ("learned", "appearance", "decoded")


def round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """Architecture of the encoder-decoder; see configs/t2i_*.py for field docs."""
  text_vocab_size: int
  text_length: int
  text_pad_id: int
  image_vocab_size: int       # K VQ codes: ids 0..K-1; BOS = K.
  image_grid: tuple[int, int]  # (H', W') VQ tokens per image.
  d_model: int
  num_heads: int
  head_dim: int
  mlp_dim: int
  encoder_layers: int
  decoder_layers: int
  norm: str = "rmsnorm"
  mlp: str = "gelu"
  image_positions: str = "learned_2d"
  text_positions: str = "learned"
  rope_theta: float = 10_000.0
  qk_norm: bool = False
  dropout: float = 0.0
  norm_eps: float = 1e-6
  attention_impl: str = "xla"  # "cudnn": flash attention on NVIDIA GPUs (bf16/fp16).
  code_embedding: str = "learned"
  code_feature_dim: int = 0   # "appearance": p*p*3 pixels of a VQ code (p: VQ factor)
  # Unrolls the layer scan in the full forward (params stay stacked on the
  # "layers" axis, so checkpoints and sharding do not change): ~1.4x faster
  # steps on XLA:CPU for small models, longer compiles for deep ones.
  unroll_layers: bool = False
  # Which model family (vlgen_jax/tasks/families.py): "encdec" (causal decoder
  # cross-attending to the text encoder), "masked" (bidirectional decoder,
  # MaskGIT), "decoder_only" (caption prefix + image in one causal stack).
  family: str = "encdec"
  dtype: str = "float32"      # compute dtype; "auto" resolved by `compute_dtype()`.
  remat: str = "none"

  # ---- derived sizes --------------------------------------------------------
  @property
  def num_image_tokens(self) -> int:
    return self.image_grid[0] * self.image_grid[1]

  @property
  def image_bos_id(self) -> int:
    return self.image_vocab_size

  @property
  def mask_id(self) -> int:
    """[MASK] of the masked family: the same id (and row) as BOS."""
    return self.image_vocab_size

  @property
  def image_vocab_padded(self) -> int:
    """Codes + BOS, rounded up; ids >= image_vocab_size are never predicted."""
    return round_up(self.image_vocab_size + 1, VOCAB_MULTIPLE)

  @property
  def text_vocab_padded(self) -> int:
    return round_up(self.text_vocab_size, VOCAB_MULTIPLE)

  def compute_dtype(self):
    from vlgen_jax.train import numerics
    return numerics.compute_dtype({"dtype": self.dtype})

  # ---- construction -----------------------------------------------------------
  @classmethod
  def from_config(cls, config) -> "ModelSpec":
    """Reads `config.model`, `config.dtype`, `config.remat`; validates."""
    m = config.model
    fields = {f.name for f in dataclasses.fields(cls)} - {"dtype", "remat"}
    missing = sorted(f for f in ("text_vocab_size", "text_length", "image_vocab_size", "image_grid",
                                 "d_model", "num_heads", "mlp_dim", "encoder_layers",
                                 "decoder_layers") if f not in m)
    if missing:
      raise UserError(f"config.model is missing {', '.join(missing)}")
    kwargs: dict[str, Any] = {k: m[k] for k in fields if k in m}
    kwargs.setdefault("text_pad_id", 0)
    if not kwargs.get("head_dim"):
      if m.d_model % m.num_heads:
        raise UserError(f"config.model.d_model={m.d_model} is not divisible by num_heads="
                        f"{m.num_heads}; set config.model.head_dim explicitly")
      kwargs["head_dim"] = m.d_model // m.num_heads
    kwargs["image_grid"] = tuple(int(v) for v in kwargs["image_grid"])
    kwargs["dtype"] = config.get("dtype", "auto")
    kwargs["remat"] = config.get("remat", "none")
    spec = cls(**kwargs)
    spec.validate()
    return spec

  def validate(self) -> None:
    positive = ("text_vocab_size", "text_length", "image_vocab_size", "d_model", "num_heads",
                "head_dim", "mlp_dim", "encoder_layers", "decoder_layers")
    for name in positive:
      v = getattr(self, name)
      if not isinstance(v, int) or v <= 0:
        raise UserError(f"config.model.{name} must be a positive integer, got {v!r}")
    if len(self.image_grid) != 2 or min(self.image_grid) <= 0:
      raise UserError(f"config.model.image_grid must be two positive ints (H', W'), got {self.image_grid}")
    for name, allowed in (("norm", NORMS), ("mlp", MLPS), ("image_positions", IMAGE_POSITIONS),
                          ("text_positions", TEXT_POSITIONS),
                          ("attention_impl", ATTENTION_IMPLS),
                          ("code_embedding", CODE_EMBEDDINGS)):
      if getattr(self, name) not in allowed:
        raise UserError(f"config.model.{name} must be one of {', '.join(allowed)}; "
                        f"got {getattr(self, name)!r}")
    from vlgen_jax.tasks import families
    families.get_family(self.family).validate(self)  # UserError on unknown names too
    from vlgen_jax.train import numerics
    numerics.remat_policy(self.remat)  # raises UserError on unknown names
    self.compute_dtype()
    if self.image_positions == "rope_2d" and self.head_dim % 4:
      raise UserError(f"2-D RoPE needs head_dim divisible by 4, got {self.head_dim}")
    if self.text_positions == "rope" and self.head_dim % 2:
      raise UserError(f"RoPE needs an even head_dim, got {self.head_dim}")
    if not self.rope_theta > 0 or not self.norm_eps > 0:
      raise UserError(f"config.model.rope_theta and norm_eps must be > 0, got "
                      f"{self.rope_theta}, {self.norm_eps}")
    if not 0.0 <= self.dropout < 1.0:
      raise UserError(f"config.model.dropout must be in [0, 1), got {self.dropout}")
    if self.code_embedding == "appearance" and (not isinstance(self.code_feature_dim, int)
                                                or self.code_feature_dim <= 0):
      raise UserError("config.model.code_embedding='appearance' needs config.model."
                      "code_feature_dim = p*p*3 of the VQ (192 for factor 8), got "
                      f"{self.code_feature_dim!r}")
    if not 0 <= self.text_pad_id < self.text_vocab_size:
      raise UserError(f"config.model.text_pad_id={self.text_pad_id} is outside the text vocabulary")
