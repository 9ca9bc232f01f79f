"""SentencePiece tokenizer: shapes round trip, fixed-length ids, truncation, CLI."""
from __future__ import annotations

import itertools
import pickle

import numpy as np
import pytest

from vlgen_jax import cli
from vlgen_jax.shapes import scenes
from vlgen_jax.errors import UserError
from vlgen_jax.text import tokenizer as tok_lib
from vlgen_jax.text.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, TextTokenizer


def all_shapes_captions() -> list[str]:
  """Every distinct caption the shapes grammar can produce (docs/shapes.md)."""
  attrs = list(itertools.product(scenes.SHAPES, scenes.COLOR_NAMES, scenes.SIZES))
  cells = [(r, c) for r in range(scenes.GRID) for c in range(scenes.GRID)]
  out = [scenes.build_caption([scenes.ShapeObject(s, c, z, *cell)])
         for (s, c, z) in attrs for cell in cells]
  for cell_a, cell_b in itertools.combinations(cells, 2):
    for (s1, c1, z1), (s2, c2, z2) in itertools.product(attrs, attrs):
      out.append(scenes.build_caption([scenes.ShapeObject(s1, c1, z1, *cell_a),
                                       scenes.ShapeObject(s2, c2, z2, *cell_b)]))
  return out


@pytest.fixture(scope="module")
def captions() -> list[str]:
  return all_shapes_captions()


@pytest.fixture(scope="module")
def train_sample() -> list[str]:
  # Captions as the builder samples them (train split), not the full grammar:
  # the round trip below must generalise to combinations never seen.
  return [scenes.sample_scene("train", i).caption for i in range(1500)]


@pytest.fixture(scope="module")
def shapes_tokenizer(train_sample) -> TextTokenizer:
  return TextTokenizer.train(train_sample, 256)


def test_grammar_has_all_distinct_captions(captions):
  # 2 sizes x 6 colors x 3 shapes = 36 objects; 9 cells; C(9,2) cell pairs.
  assert len(captions) == len(set(captions)) == 36 * 9 + 36 * 36 * 36


@pytest.mark.parametrize("vocab_size", [64, 256, 1024])
def test_round_trips_every_shapes_caption(vocab_size, captions, train_sample):
  tok = TextTokenizer.train(train_sample, vocab_size)
  assert NUM_SPECIAL_OK(tok)
  assert tok.vocab_size <= vocab_size
  max_len = 48
  ids = tok.encode_batch(captions, max_len)
  assert ids.shape == (len(captions), max_len) and ids.dtype == np.int32
  assert tok.num_truncated == 0
  assert (ids[:, 0] == BOS_ID).all()
  assert not (ids == UNK_ID).any()
  decoded = tok.decode_batch(ids)
  mismatches = [(a, b) for a, b in zip(captions, decoded) if a != b]
  assert not mismatches, mismatches[:3]


def NUM_SPECIAL_OK(tok: TextTokenizer) -> bool:  # pylint: disable=invalid-name
  return [tok.id_to_piece(i) for i in range(4)] == ["<pad>", "<unk>", "<s>", "</s>"]


def test_large_vocab_keeps_whole_words(shapes_tokenizer):
  # With a vocabulary bigger than the corpus needs, every shapes word is one piece.
  ids, truncated = shapes_tokenizer.encode("a large purple triangle at the bottom right", 16)
  assert not truncated
  body = ids[1:list(ids).index(EOS_ID)]
  assert len(body) == 8


def test_fixed_length_layout_and_empty_caption(shapes_tokenizer):
  ids = shapes_tokenizer.encode_batch(["", "a small red circle in the center"], 12)
  np.testing.assert_array_equal(ids[0], [BOS_ID, EOS_ID] + [PAD_ID] * 10)
  row = list(ids[1])
  eos = row.index(EOS_ID)
  assert row[0] == BOS_ID and all(i == PAD_ID for i in row[eos + 1:])
  assert all(i > EOS_ID for i in row[1:eos])
  assert shapes_tokenizer.decode_batch(ids) == ["", "a small red circle in the center"]


def test_truncation_keeps_bos_eos_and_counts(shapes_tokenizer):
  tok = TextTokenizer.from_bytes(shapes_tokenizer.to_bytes())
  long = "a small red circle at the top left and a large blue square at the bottom right"
  short = "a small red circle"
  full = tok.encode_batch([long], 64)[0]
  n_pieces = list(full).index(EOS_ID) - 1
  ids = tok.encode_batch([long, short, long], 6)
  assert tok.num_truncated == 2
  np.testing.assert_array_equal(ids[0], np.concatenate([full[:5], [EOS_ID]]))
  assert ids[0][0] == BOS_ID and ids[0][-1] == EOS_ID and n_pieces > 4
  assert long.startswith(tok.decode(ids[0]))
  # The pure single-caption form reports truncation without counting it.
  _, truncated = tok.encode(long, 6)
  assert truncated and tok.num_truncated == 2


def test_unknown_characters_map_to_unk(shapes_tokenizer):
  ids, _ = shapes_tokenizer.encode("a red 猫", 16)
  assert UNK_ID in ids


def test_serialization_round_trips(shapes_tokenizer, tmp_path, captions):
  path = tmp_path / "sub" / "tok.model"
  shapes_tokenizer.save(path)
  loaded = TextTokenizer.from_file(path)
  assert loaded.to_bytes() == shapes_tokenizer.to_bytes()
  assert loaded.fingerprint == shapes_tokenizer.fingerprint
  sample = captions[::97]
  np.testing.assert_array_equal(loaded.encode_batch(sample, 24),
                                shapes_tokenizer.encode_batch(sample, 24))
  # Copies handed to worker processes rebuild the processor from the proto.
  clone = pickle.loads(pickle.dumps(loaded))
  np.testing.assert_array_equal(clone.encode_batch(sample, 24), loaded.encode_batch(sample, 24))


def test_other_corpus_gives_other_fingerprint(shapes_tokenizer):
  other = TextTokenizer.train(["the quick brown fox jumps over the lazy dog"] * 50, 64)
  assert other.fingerprint != shapes_tokenizer.fingerprint


def test_bad_inputs_are_user_errors(tmp_path, shapes_tokenizer):
  with pytest.raises(UserError, match="not found"):
    TextTokenizer.from_file(tmp_path / "missing.model")
  with pytest.raises(UserError, match="SentencePiece"):
    TextTokenizer.from_bytes(b"definitely not a model proto")
  with pytest.raises(UserError, match="at least 2"):
    shapes_tokenizer.encode_batch(["a"], 1)
  with pytest.raises(UserError, match="vocab-size"):
    tok_lib.train_sentencepiece(["a b c"], 8)
  with pytest.raises(UserError, match="no sentences"):
    tok_lib.train_sentencepiece([], 64)


def test_cli_text_file(tmp_path, train_sample):
  text = tmp_path / "captions.txt"
  # A non-UTF-8 line and empty lines are skipped, not fatal.
  text.write_bytes("\n".join(train_sample[:400]).encode() + b"\n\n\xff\xfe bad\n   \n")
  out = tmp_path / "tok.model"
  rc = cli.main(["text-tokenizer", "--text-file", str(text), "--vocab-size", "128",
                 "--output", str(out)])
  assert rc == 0
  tok = TextTokenizer.from_file(out)
  assert tok.vocab_size <= 128
  ids = tok.encode_batch(train_sample[400:500], 32)
  assert tok.decode_batch(ids) == train_sample[400:500]


def test_cli_errors_are_one_line(tmp_path, capsys):
  rc = cli.main(["text-tokenizer", "--text-file", str(tmp_path / "nope.txt"), "--vocab-size", "64",
                 "--output", str(tmp_path / "t.model")])
  assert rc == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: cannot read --text-file")


def test_cli_shapes_dataset(tmp_path, shapes_data_dir):
  out = tmp_path / "shapes.model"
  rc = cli.main(["text-tokenizer", "--dataset", "shapes/res64_train512_val64_heldout64",
                 "--data-dir", str(shapes_data_dir), "--vocab-size", "1024", "--output", str(out)])
  assert rc == 0
  tok = TextTokenizer.from_file(out)
  assert tok.vocab_size < 1024  # soft limit: the shapes corpus needs far fewer pieces
  # Round trip on a fifth of the grammar's captions, most never seen in 512
  # examples (all of them: test_round_trips_every_shapes_caption).
  captions = all_shapes_captions()[::5]
  assert tok.decode_batch(tok.encode_batch(captions, 32)) == captions
  assert tok.num_truncated == 0


def test_cli_dataset_errors(tmp_path, shapes_data_dir, capsys):
  rc = cli.main(["text-tokenizer", "--dataset", "shapes", "--vocab-size", "64",
                 "--output", str(tmp_path / "t.model")])
  assert rc == 2 and "needs --data-dir" in capsys.readouterr().err
  rc = cli.main(["text-tokenizer", "--dataset", "shapes/res64_train512_val64_heldout64",
                 "--data-dir", str(shapes_data_dir), "--caption-key", "text",
                 "--vocab-size", "64", "--output", str(tmp_path / "t.model")])
  assert rc == 2 and "no feature 'text'" in capsys.readouterr().err
