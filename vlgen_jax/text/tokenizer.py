"""SentencePiece text tokenizer: training from sentences and fixed-length encoding.

Ids (the same for every model trained here):
  0 = PAD  fills `text_ids` after EOS; models mask it out.
  1 = UNK  characters the model never saw (no byte fallback by default).
  2 = BOS  first id of every encoded caption.
  3 = EOS  last real id of every encoded caption.

`encode_batch(texts, max_len)` gives `BOS piece... EOS PAD...` rows. The empty
caption "" encodes to `BOS EOS PAD...`, the unconditional caption used for
classifier-free guidance. Captions longer than `max_len - 2` pieces are cut,
keeping BOS and EOS, and counted in `num_truncated` (not an error).

The model is a serialized SentencePiece `ModelProto` (bytes): it is written to
a `.model` file and copied into every checkpoint that needs it, so a run never
depends on a path outside its workdir.
"""
from __future__ import annotations

import hashlib
import io
import os
from typing import Iterable, Iterator, Sequence

import numpy as np
import sentencepiece as spm

from vlgen_jax import files
from vlgen_jax.errors import UserError

PAD_ID = 0
UNK_ID = 1
BOS_ID = 2
EOS_ID = 3
NUM_SPECIAL = 4

MIN_VOCAB_SIZE = 16

# File name of the model inside a checkpoint export (`export/assets/`, via
# Task.export_files) so that training, sampling and eval agree on it.
TOKENIZER_ASSET = "text_tokenizer.model"


def train_sentencepiece(sentences: Iterable[str], vocab_size: int, *,
                        model_type: str = "bpe",
                        character_coverage: float = 1.0,
                        byte_fallback: bool = False,
                        max_sentences: int = 2_000_000,
                        num_threads: int = 2) -> bytes:
  """Trains a SentencePiece model on `sentences`; returns the model proto bytes.

  `vocab_size` is an upper bound (`hard_vocab_limit=False`): a corpus with few
  distinct words (shapes has ~35) yields a smaller vocabulary instead of an
  error, so any size from 64 up works. The real size is
  `TextTokenizer.vocab_size`.

  BPE is the default: on small, repetitive caption corpora the unigram trainer
  prunes down to near-character pieces, while BPE keeps whole words.
  """
  if vocab_size < MIN_VOCAB_SIZE:
    raise UserError(f"--vocab-size must be at least {MIN_VOCAB_SIZE}, got {vocab_size}")
  if byte_fallback and vocab_size < 256 + NUM_SPECIAL + 8:
    raise UserError(f"byte fallback needs --vocab-size >= {256 + NUM_SPECIAL + 8}, got {vocab_size}")
  sentences = iter(sentences)
  try:
    first = next(sentences)
  except StopIteration:
    raise UserError("no sentences to train the tokenizer on") from None

  def chained() -> Iterator[str]:
    yield first
    yield from sentences

  model = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=chained(),
        model_writer=model,
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        model_type=model_type,
        character_coverage=character_coverage,
        byte_fallback=byte_fallback,
        input_sentence_size=max_sentences,
        shuffle_input_sentence=True,
        pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
        pad_piece="<pad>", unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>",
        num_threads=num_threads,
        minloglevel=2,
    )
  except RuntimeError as e:
    # SentencePiece reports bad parameters / corpora as RuntimeError with a
    # multi-line message; keep its first line.
    raise UserError(f"sentencepiece training failed: {str(e).strip().splitlines()[0]}") from None
  return model.getvalue()


class TextTokenizer:
  """Encodes captions to fixed-length id rows and decodes them back."""

  def __init__(self, model_proto: bytes):
    self._proto = bytes(model_proto)
    self._sp = spm.SentencePieceProcessor()
    try:
      self._sp.LoadFromSerializedProto(self._proto)
    except (RuntimeError, OSError) as e:
      raise UserError(f"not a SentencePiece model: {str(e).strip().splitlines()[0]}") from None
    expected = {PAD_ID: self._sp.pad_id(), UNK_ID: self._sp.unk_id(),
                BOS_ID: self._sp.bos_id(), EOS_ID: self._sp.eos_id()}
    if any(k != v for k, v in expected.items()):
      raise UserError("SentencePiece model has other special ids than pad=0 unk=1 bos=2 eos=3; "
                      "train it with `vlgen text-tokenizer`")
    self.num_truncated = 0

  # ---- construction / serialization ------------------------------------
  @classmethod
  def from_bytes(cls, model_proto: bytes) -> TextTokenizer:
    return cls(model_proto)

  @classmethod
  def from_file(cls, path: str | os.PathLike) -> TextTokenizer:
    try:
      with open(path, "rb") as f:
        return cls(f.read())
    except FileNotFoundError:
      raise UserError(f"tokenizer model not found: {path}") from None

  @classmethod
  def train(cls, sentences: Iterable[str], vocab_size: int, **kwargs) -> TextTokenizer:
    return cls(train_sentencepiece(sentences, vocab_size, **kwargs))

  def to_bytes(self) -> bytes:
    return self._proto

  def save(self, path: str | os.PathLike) -> None:
    """Writes the model atomically (temp file + rename)."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with files.atomic_path(path) as tmp:
      with open(tmp, "wb") as f:
        f.write(self._proto)

  @property
  def fingerprint(self) -> str:
    """Short content hash: records which tokenizer a dataset/checkpoint used."""
    return hashlib.sha256(self._proto).hexdigest()[:16]

  # Grain may copy transforms into worker processes; the processor itself is
  # rebuilt from the proto bytes.
  def __getstate__(self):
    return {"proto": self._proto, "num_truncated": self.num_truncated}

  def __setstate__(self, state):
    self.__init__(state["proto"])
    self.num_truncated = state["num_truncated"]

  # ---- vocabulary -------------------------------------------------------
  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  def id_to_piece(self, i: int) -> str:
    return self._sp.id_to_piece(int(i))

  # ---- encoding ---------------------------------------------------------
  def encode(self, text: str, max_len: int) -> tuple[np.ndarray, bool]:
    """One caption -> (int32 (max_len,), truncated?). Pure: counts nothing."""
    _check_max_len(max_len)
    pieces = self._sp.encode(text, out_type=int)
    truncated = len(pieces) > max_len - 2
    row = np.full((max_len,), PAD_ID, np.int32)
    body = pieces[:max_len - 2]
    row[0] = BOS_ID
    row[1:1 + len(body)] = body
    row[1 + len(body)] = EOS_ID
    return row, truncated

  def encode_batch(self, texts: Sequence[str], max_len: int) -> np.ndarray:
    """Captions -> int32 (B, max_len); adds truncated ones to `num_truncated`."""
    _check_max_len(max_len)
    out = np.full((len(texts), max_len), PAD_ID, np.int32)
    for i, text in enumerate(texts):
      out[i], truncated = self.encode(text, max_len)
      self.num_truncated += int(truncated)
    return out

  # ---- decoding ---------------------------------------------------------
  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    """Ids -> text; reads up to the first EOS, ignoring BOS and PAD."""
    body = []
    for i in np.asarray(ids).reshape(-1).tolist():
      if i == EOS_ID:
        break
      if i in (BOS_ID, PAD_ID):
        continue
      body.append(int(i))
    return self._sp.decode(body)

  def decode_batch(self, ids: np.ndarray) -> list[str]:
    ids = np.asarray(ids)
    if ids.ndim != 2:
      raise ValueError(f"decode_batch expects (B, L) ids, got shape {ids.shape}")
    return [self.decode(row) for row in ids]


def _check_max_len(max_len: int) -> None:
  if max_len < 2:
    raise UserError(f"max text length must be at least 2 (BOS and EOS), got {max_len}")
