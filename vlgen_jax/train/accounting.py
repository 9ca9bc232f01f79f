"""Parameter counts and training FLOPs of the encoder-decoder models (t2i, captioner).

FLOPs are counted analytically from the architecture (multiply-add = 2
FLOPs; training = 3x forward), MaxText/PaLM style: all matmuls plus the
attention score and value products. Causal self-attention is counted in
full, as the XLA path computes it. Embedding lookups count nothing.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np

from vlgen_jax.model.spec import ModelSpec

# Param paths containing one of these are embeddings or the output
# (un)embedding over the vocabulary; the rest are "non-embedding" params.
EMBEDDING_MARKERS = ("token_embed", "position_embed", "logits")


def forward_flops(spec: ModelSpec) -> dict[str, float]:
  """Forward FLOPs per example, by part."""
  return encoder_decoder_flops(spec, source=spec.text_length, target=spec.num_image_tokens,
                               out_vocab=spec.image_vocab_padded)


def encoder_decoder_flops(spec: ModelSpec, *, source: int, target: int,
                          out_vocab: int) -> dict[str, float]:
  """Forward FLOPs of an encoder over `source` positions and a decoder over
  `target` positions predicting `out_vocab` ids (t2i: text -> image; the
  captioner: image -> text)."""
  d, attn_dim, f = spec.d_model, spec.num_heads * spec.head_dim, spec.mlp_dim
  mlp_mats = 3 if spec.mlp == "swiglu" else 2
  qkvo = 4 * d * attn_dim
  encoder_layer = 2 * source * (qkvo + mlp_mats * d * f) + 4 * source * source * attn_dim
  decoder_layer = (2 * target * (qkvo + 2 * d * attn_dim + mlp_mats * d * f)  # self, cross q/o, mlp
                   + 2 * source * (2 * d * attn_dim)                          # cross k/v of the source
                   + 4 * target * target * attn_dim + 4 * target * source * attn_dim)
  return {
      "encoder": float(spec.encoder_layers * encoder_layer),
      "decoder": float(spec.decoder_layers * decoder_layer),
      "logits": float(2 * target * d * out_vocab),
  }


def training_flops_per_example(spec: ModelSpec) -> float:
  return 3.0 * sum(forward_flops(spec).values())


def _path_str(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def param_counts(params: Any) -> Mapping[str, int]:
  """Counts of a (possibly abstract, possibly boxed) param tree.

  Returns total, embedding (token/position embeddings and the output
  projection over the vocabulary), non_embedding, encoder and decoder.
  """
  import flax.linen as nn
  counts = {"total": 0, "embedding": 0, "non_embedding": 0, "encoder": 0, "decoder": 0}
  for path, leaf in jax.tree_util.tree_flatten_with_path(nn.unbox(params))[0]:
    name = _path_str(path)
    n = int(np.prod(leaf.shape))
    counts["total"] += n
    if any(m in name for m in EMBEDDING_MARKERS):
      counts["embedding"] += n
    else:
      counts["non_embedding"] += n
    if name.startswith("encoder/"):
      counts["encoder"] += n
    elif name.startswith("decoder/"):
      counts["decoder"] += n
  return counts
