"""The masked image-token model (MaskGIT / MUSE): text encoder + bidirectional decoder.

The same text encoder and image decoder as the encoder-decoder
(vlgen_jax/model/t2i.py), with the decoder's self-attention bidirectional
(`spec.family == "masked"`). Input position i holds image token i or
[MASK] (id K = `spec.mask_id`, the row the causal families use for BOS); the
output at i is the distribution of token i given the caption and every
unmasked token. Training (vlgen_jax/tasks/families.py) masks a cosine-
scheduled fraction of the tokens and scores the masked ones; sampling
(vlgen_jax/sample/parallel.py) unmasks the most confident predictions over a
few parallel steps.

Decode API:
  encoded, text_mask = model.apply(v, text_ids, method="encode_text")
  logits = model.apply(v, encoded, text_mask, tokens, method="predict")
"""
from __future__ import annotations

import flax.linen as nn

from vlgen_jax.model.image_decoder import ImageDecoder
from vlgen_jax.model.spec import ModelSpec
from vlgen_jax.model.text_encoder import TextEncoder


class MaskedModel(nn.Module):
  spec: ModelSpec

  def setup(self):
    dtype = self.spec.compute_dtype()
    self.encoder = TextEncoder(self.spec, dtype)
    self.decoder = ImageDecoder(self.spec, dtype)

  def __call__(self, text_ids, tokens, train: bool = False):
    """text_ids (B, L), tokens (B, N) with [MASK] = K -> fp32 logits (B, N, V_padded)."""
    encoded, text_mask = self.encoder(text_ids, deterministic=not train, remat=train)
    return self.decoder(tokens, mode="train", encoded=encoded, text_mask=text_mask,
                        deterministic=not train, remat=train)

  def encode_text(self, text_ids):
    return self.encoder(text_ids, deterministic=True)

  def predict(self, encoded, text_mask, tokens):
    """One parallel-decoding step: logits of every position given the text once encoded."""
    return self.decoder(tokens, mode="train", encoded=encoded, text_mask=text_mask)
