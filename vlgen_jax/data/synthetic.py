"""Synthetic caption -> image-token data whose images are a function of the text.

Used to test and debug the text-to-image model without a VQ tokenizer: a
caption is BOS, 1..max_words random content words, EOS, then padding. The
image's N tokens are split into `max_words` contiguous bands; band r shows
content word r as fixed random codes `table[word, token]` (the table is
drawn once from `table_seed`), and bands past the caption's last word are
blank (code 0). Only the text says which codes an image has, so a model that
reaches high accuracy must read the caption through cross-attention.

Example `i` of a split depends only on `(seed, split, i)`, never on batch
size or process count; iterators are Grain `DatasetIterator`s whose state
(the next batch index) saves and restores exactly.
"""
from __future__ import annotations

import ml_collections
import numpy as np

from vlgen_jax.errors import UserError
from vlgen_jax.text.tokenizer import BOS_ID, EOS_ID, NUM_SPECIAL, PAD_ID

FIRST_WORD_ID = NUM_SPECIAL  # same special ids as the SentencePiece tokenizer
EMPTY_CAPTION = (BOS_ID, EOS_ID)  # then PAD_ID up to the text length
BLANK_CODE = 0
SPLITS = {"train": 0, "validation": 1}
_ENDLESS = 2**62  # batches; far beyond any run


def default_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      "num_words": 32,    # content-word ids FIRST_WORD_ID .. FIRST_WORD_ID + num_words - 1
      "min_words": 1,
      "max_words": 4,     # also the number of image bands
      "table_seed": 1234,
  })


class SyntheticCaptions:
  """Deterministic (text_ids, image_tokens) examples; see the module docstring."""

  def __init__(self, *, text_length: int, text_vocab_size: int, image_grid: tuple[int, int],
               image_vocab_size: int, num_words: int, min_words: int, max_words: int,
               table_seed: int):
    self.num_tokens = int(image_grid[0] * image_grid[1])
    if not 1 <= min_words <= max_words:
      raise UserError(f"synthetic data needs 1 <= min_words <= max_words, got {min_words}, {max_words}")
    if max_words + 2 > text_length:
      raise UserError(f"synthetic captions of {max_words} words need text_length >= {max_words + 2}")
    if FIRST_WORD_ID + num_words > text_vocab_size:
      raise UserError(f"synthetic data with {num_words} words needs text_vocab_size >= "
                      f"{FIRST_WORD_ID + num_words}, got {text_vocab_size}")
    if max_words > self.num_tokens:
      raise UserError(f"synthetic data: max_words={max_words} exceeds the {self.num_tokens} image tokens")
    self.text_length = text_length
    self.num_words, self.min_words, self.max_words = num_words, min_words, max_words
    self.table = np.random.default_rng(table_seed).integers(
        0, image_vocab_size, (num_words, self.num_tokens), dtype=np.int32)
    # Token j belongs to band j * max_words // N (contiguous, near-equal bands).
    self.band = (np.arange(self.num_tokens) * max_words) // self.num_tokens

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "SyntheticCaptions":
    m, syn = config.model, config.data.get("synthetic", default_config())
    return cls(text_length=m.text_length, text_vocab_size=m.text_vocab_size,
               image_grid=tuple(m.image_grid), image_vocab_size=m.image_vocab_size,
               num_words=syn.num_words, min_words=syn.min_words, max_words=syn.max_words,
               table_seed=syn.table_seed)

  def example(self, index: int, *, seed: int, split: str) -> dict[str, np.ndarray]:
    if split not in SPLITS:
      raise UserError(f"synthetic data has splits {sorted(SPLITS)}, not {split!r}")
    rng = np.random.default_rng([seed, SPLITS[split], index])
    n = int(rng.integers(self.min_words, self.max_words + 1))
    words = rng.integers(0, self.num_words, n)
    text = np.full(self.text_length, PAD_ID, np.int32)
    text[0], text[1:n + 1], text[n + 1] = BOS_ID, words + FIRST_WORD_ID, EOS_ID
    return {"text_ids": text, "image_tokens": self.image_tokens(words)}

  def image_tokens(self, words: np.ndarray) -> np.ndarray:
    """The image of a caption's content words (0-based word indices)."""
    tokens = np.full(self.num_tokens, BLANK_CODE, np.int32)
    shown = self.band < len(words)
    tokens[shown] = self.table[words[self.band[shown]], np.nonzero(shown)[0]]
    return tokens

  def batch(self, batch_index: int, *, seed: int, split: str, batch_size: int,
            process_index: int = 0, process_count: int = 1) -> dict[str, np.ndarray]:
    first = (batch_index * process_count + process_index) * batch_size
    examples = [self.example(first + i, seed=seed, split=split) for i in range(batch_size)]
    return {k: np.stack([e[k] for e in examples]) for k in examples[0]}

  def dataset(self, *, split: str, seed: int, batch_size: int, process_index: int = 0,
              process_count: int = 1):
    """Endless Grain IterDataset of batches (dicts of numpy arrays)."""
    import grain
    if split not in SPLITS:
      raise UserError(f"synthetic data has splits {sorted(SPLITS)}, not {split!r}")
    ds = grain.MapDataset.range(_ENDLESS).map(
        lambda b: self.batch(b, seed=seed, split=split, batch_size=batch_size,
                             process_index=process_index, process_count=process_count))
    # Batches are cheap numpy work; one reader thread avoids GIL contention.
    return ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=4))
