"""A plain PyTorch reference sampler with the shapes of a `ModelSpec`.

What a user of LlamaGen-style code runs: eager PyTorch, a Python loop over
tokens, a preallocated KV cache per layer written in place
(`cache[:, :, pos] = k`), cross-attention K/V computed once, top-k sampling
with `torch.multinomial`, classifier-free guidance as one 2B batch. Random
weights (only the shapes matter for speed): text encoder (bidirectional
self-attention + MLP) and decoder layers (causal self-attention, cross-
attention, MLP), RMSNorm, GELU, learned 2-D positions.

Optional: `benchmarks/sample.py` adds its rows only when `import torch`
works; torch is not a dependency of vlgen_jax.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _rms(x, w, eps=1e-6):
  return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


class TorchSampler:
  def __init__(self, spec, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    d, h, hd, m = spec.d_model, spec.num_heads, spec.head_dim, spec.mlp_dim
    w = lambda *shape: torch.randn(*shape, generator=g) / math.sqrt(shape[0])  # noqa: E731
    self.spec = spec
    self.h, self.hd = h, hd

    def block(cross: bool):
      b = {"n1": torch.ones(d), "q": w(d, h * hd), "k": w(d, h * hd), "v": w(d, h * hd),
           "o": w(h * hd, d), "n3": torch.ones(d), "wi": w(d, m), "wo": w(m, d)}
      if cross:
        b.update(n2=torch.ones(d), cq=w(d, h * hd), ck=w(d, h * hd), cv=w(d, h * hd),
                 co=w(h * hd, d))
      return b

    self.text_embed = torch.randn(spec.text_vocab_padded, d, generator=g)
    self.text_pos = torch.randn(spec.text_length, d, generator=g) * 0.02
    self.encoder = [block(False) for _ in range(spec.encoder_layers)]
    self.enc_norm = torch.ones(d)
    self.image_embed = torch.randn(spec.image_vocab_padded, d, generator=g)
    self.row = torch.randn(spec.image_grid[0], d, generator=g) * 0.02
    self.col = torch.randn(spec.image_grid[1], d, generator=g) * 0.02
    self.decoder = [block(True) for _ in range(spec.decoder_layers)]
    self.final_norm = torch.ones(d)
    self.logits = w(d, spec.image_vocab_padded)

  def _heads(self, x):  # (B, T, h*hd) -> (B, h, T, hd)
    return x.view(x.shape[0], x.shape[1], self.h, self.hd).transpose(1, 2)

  def _merge(self, x):
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], self.h * self.hd)

  def encode(self, text):
    x = self.text_embed[text] + self.text_pos
    mask = (text != self.spec.text_pad_id)[:, None, None, :]
    for b in self.encoder:
      y = _rms(x, b["n1"])
      q, k, v = (self._heads(y @ b[n]) for n in ("q", "k", "v"))
      x = x + self._merge(F.scaled_dot_product_attention(q, k, v, attn_mask=mask)) @ b["o"]
      x = x + F.gelu(_rms(x, b["n3"]) @ b["wi"], approximate="tanh") @ b["wo"]
    return _rms(x, self.enc_norm), mask

  @torch.inference_mode()
  def sample(self, text, *, cfg_scale: float = 1.0, top_k: int = 100, temperature: float = 1.0):
    """text (B, L) int64 -> image tokens (B, N)."""
    s = self.spec
    batch = text.shape[0]
    guided = cfg_scale != 1.0
    if guided:
      text = torch.cat([text, torch.full_like(text, s.text_pad_id)])
    encoded, text_mask = self.encode(text)
    rows = text.shape[0]
    n = s.num_image_tokens
    cross = [(self._heads(encoded @ b["ck"]), self._heads(encoded @ b["cv"])) for b in self.decoder]
    caches = [(torch.zeros(rows, self.h, n, self.hd), torch.zeros(rows, self.h, n, self.hd))
              for _ in self.decoder]
    token = torch.full((rows,), s.image_bos_id, dtype=torch.long)
    out = torch.empty(batch, n, dtype=torch.long)
    for pos in range(n):
      x = (self.image_embed[token] + self.row[pos // s.image_grid[1]] +
           self.col[pos % s.image_grid[1]])[:, None]
      for b, (ck, cv), (kc, vc) in zip(self.decoder, cross, caches):
        y = _rms(x, b["n1"])
        q, k, v = (self._heads(y @ b[name]) for name in ("q", "k", "v"))
        kc[:, :, pos] = k[:, :, 0]
        vc[:, :, pos] = v[:, :, 0]
        att = F.scaled_dot_product_attention(q, kc[:, :, :pos + 1], vc[:, :, :pos + 1])
        x = x + self._merge(att) @ b["o"]
        y = _rms(x, b["n2"])
        att = F.scaled_dot_product_attention(self._heads(y @ b["cq"]), ck, cv, attn_mask=text_mask)
        x = x + self._merge(att) @ b["co"]
        x = x + F.gelu(_rms(x, b["n3"]) @ b["wi"], approximate="tanh") @ b["wo"]
      logits = (_rms(x[:, 0], self.final_norm) @ self.logits)
      logits[:, s.image_vocab_size:] = -1e9
      if guided:
        logits = logits[batch:] + cfg_scale * (logits[:batch] - logits[batch:])
      logits = logits / temperature
      kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
      logits = logits.masked_fill(logits < kth, float("-inf"))
      nxt = torch.multinomial(torch.softmax(logits, dim=-1), 1)[:, 0]
      out[:, pos] = nxt
      token = torch.cat([nxt, nxt]) if guided else nxt
    return out
