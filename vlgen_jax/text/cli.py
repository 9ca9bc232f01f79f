"""`vlgen text-tokenizer`: train a SentencePiece model on captions.

    vlgen text-tokenizer --dataset shapes --data-dir D --vocab-size 256 --output tok.model
    vlgen text-tokenizer --dataset coco_captions --caption-key captions/text ...
    vlgen text-tokenizer --text-file captions.txt --vocab-size 32000 --output tok.model
    vlgen text-tokenizer --folder DIR [--split train[:95%]] --vocab-size 256 --output tok.model
    vlgen text-tokenizer --tar DIR ...

Captions come from a TFDS dataset split (any caption feature; one holding
several captions per example contributes all of them), a UTF-8 text file
with one caption per line, or a split of an image dataset of your own:
`--folder DIR` (captions.tsv + images) or `--tar DIR` (WebDataset shards),
where DIR holds one subfolder per split or is the train split itself (as
data.source=folder|tar reads them; images are not opened). Empty and non-UTF-8 captions are skipped and
counted. `--dataset shapes` builds the shapes dataset in --data-dir on first
use (default size; pass a full name such as shapes/res64_train50000_val2000_heldout2000
for another config).
"""
from __future__ import annotations

import argparse
import os
from typing import Iterator

HELP = "train the SentencePiece text tokenizer on a dataset's captions or a text file"


def add_arguments(parser: argparse.ArgumentParser) -> None:
  src = parser.add_mutually_exclusive_group(required=True)
  src.add_argument("--dataset", help="TFDS dataset name (incl. config), e.g. shapes or coco_captions")
  src.add_argument("--text-file", help="UTF-8 text file, one caption per line")
  src.add_argument("--folder", help="image folder dataset (captions.tsv), as data.source=folder")
  src.add_argument("--tar", help="WebDataset tar shards (KEY.txt captions), as data.source=tar")
  parser.add_argument("--data-dir", default="", help="TFDS data_dir (for shapes: where it is built)")
  parser.add_argument("--split", default="train",
                      help="split to read captions from, slices allowed (default: train)")
  parser.add_argument("--caption-key", default="caption",
                      help="caption feature, nested with / (default: caption)")
  parser.add_argument("--vocab-size", type=int, required=True,
                      help="vocabulary size upper bound (small corpora give fewer pieces)")
  parser.add_argument("--output", required=True, help="where to write the .model file")
  parser.add_argument("--model-type", default="bpe", choices=("bpe", "unigram"),
                      help="SentencePiece algorithm (default: bpe)")
  parser.add_argument("--character-coverage", type=float, default=1.0,
                      help="fraction of characters covered (lower it for CJK corpora)")
  parser.add_argument("--byte-fallback", action="store_true",
                      help="encode unseen characters as bytes instead of <unk> (vocab >= 268)")
  parser.add_argument("--max-sentences", type=int, default=2_000_000,
                      help="train on at most this many captions (default: 2M)")


class _Counter:
  def __init__(self):
    self.used = 0
    self.skipped: dict[str, int] = {}

  def skip(self, reason: str) -> None:
    self.skipped[reason] = self.skipped.get(reason, 0) + 1


def _text_file_captions(f, counter: _Counter) -> Iterator[str]:
  from vlgen_jax.data.decode import BadRecord, decode_caption  # pylint: disable=g-import-not-at-top
  with f:
    for line in f:
      try:
        yield decode_caption(line)
      except BadRecord as e:
        counter.skip(e.reason)


def _dataset_captions(args, counter: _Counter) -> Iterator[str]:
  """Opens the split now (errors before any progress bar); yields lazily."""
  from vlgen_jax.data import decode, pipeline  # pylint: disable=g-import-not-at-top
  from vlgen_jax.errors import UserError  # pylint: disable=g-import-not-at-top
  cfg = pipeline.default_data_config()
  if args.dataset:
    if args.dataset.split("/")[0] in pipeline.LOCAL_TFDS_BUILDERS and not args.data_dir:
      raise UserError(f"--dataset {args.dataset} is built on first use and needs --data-dir "
                      "(where to build it)")
    cfg.source = "tfds"
    cfg.name, cfg.data_dir, cfg.image_key, cfg.caption_key = (
        args.dataset, args.data_dir, "", args.caption_key)
  else:
    cfg.source = "folder" if args.folder else "tar"
    cfg.data_dir = args.folder or args.tar
  source = pipeline.make_source(cfg, args.split)

  def generate():
    for i in range(len(source)):
      for caption in decode.caption_choices(source[i]["caption"]):
        try:
          yield decode.decode_caption(caption)
        except decode.BadRecord as e:
          counter.skip(e.reason)

  return generate()


def run(args) -> int:
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  from vlgen_jax.text.tokenizer import TextTokenizer, train_sentencepiece  # pylint: disable=g-import-not-at-top
  from vlgen_jax.errors import UserError  # pylint: disable=g-import-not-at-top

  if args.max_sentences < 1:
    raise UserError(f"--max-sentences must be >= 1, got {args.max_sentences}")
  if not args.output.strip() or os.path.isdir(args.output):
    raise UserError(f"--output {args.output!r} must be the path of a .model file, not a "
                    "directory")
  counter = _Counter()
  if args.text_file:
    try:
      f = open(args.text_file, "rb")  # opened now: errors before any progress bar
    except OSError as e:
      raise UserError(f"cannot read --text-file {args.text_file}: {e.strerror}") from None
    captions = _text_file_captions(f, counter)
    what = args.text_file
  else:
    captions = _dataset_captions(args, counter)
    what = f"{args.dataset or args.folder or args.tar} {args.split}"

  def counted() -> Iterator[str]:
    with tqdm(desc=f"captions of {what}", unit=" captions") as bar:
      for caption in captions:
        counter.used += 1
        bar.update(1)
        yield caption
        if counter.used >= args.max_sentences:
          break

  proto = train_sentencepiece(counted(), args.vocab_size, model_type=args.model_type,
                              character_coverage=args.character_coverage,
                              byte_fallback=args.byte_fallback,
                              max_sentences=args.max_sentences)
  tokenizer = TextTokenizer.from_bytes(proto)
  tokenizer.save(args.output)
  skipped = ", ".join(f"{k} {v}" for k, v in sorted(counter.skipped.items())) or "none"
  print(f"wrote {args.output}: vocab {tokenizer.vocab_size} (asked {args.vocab_size}), "
        f"trained on {counter.used} captions, skipped: {skipped}")
  return 0
