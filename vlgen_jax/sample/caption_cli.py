"""`vlgen caption`: captions images with a trained captioner run.

  vlgen caption --workdir RUN --images DIR         # writes DIR/captions.tsv
  vlgen caption --workdir RUN --tokens TOKENS_DIR --split validation --output out.tsv

Images are VQ-encoded with the run's VQ (they must be at its resolution);
a token dataset (`vlgen encode` output) is captioned as stored, and its
reference captions are written alongside. Greedy by default (`--beam-size`).
"""
from __future__ import annotations

import argparse
import os

from vlgen_jax import files
from vlgen_jax.errors import UserError

HELP = "caption images (or a token dataset) with a trained captioner"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--workdir", required=True, help="captioner run (or a demo workdir)")
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--images", help="folder of images at the VQ's resolution")
  source.add_argument("--tokens", help="token dataset directory (`vlgen encode` output)")
  parser.add_argument("--split", default="validation", help="split of --tokens")
  parser.add_argument("--num", type=int, default=0, help="first N records of --tokens (0 = all)")
  parser.add_argument("--output", default="",
                      help="TSV to write (default DIR/captions.tsv for --images)")
  parser.add_argument("--beam-size", type=int, default=None,
                      help="beam width (1 = greedy; default the run's config.caption.beam_size)")
  parser.add_argument("--pmi-weight", type=float, default=None,
                      help="PMI-guided decoding: add w * (log p(c|image) - log p(c|no image)) "
                           "per id (default: the run's config.caption.pmi_weight)")
  parser.add_argument("--plausibility", type=float, default=None,
                      help="with --pmi-weight: only ids with p(c|image) >= this fraction of "
                           "the most likely id's (default: config.caption.plausibility)")
  parser.add_argument("--mask-previous", action=argparse.BooleanOptionalAction, default=None,
                      help="read each piece with the one before it hidden (a captioner trained "
                           "with word dropout; default: config.caption.mask_previous)")
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--step", type=int, default=None, help="checkpoint step (default newest)")
  parser.add_argument("--vq-workdir", default=None, help="VQ run (default: the run's own)")


def read_images(folder: str):
  """(names, uint8 images, skipped) of the image files in `folder`, sorted by
  name; files that do not decode are skipped and counted."""
  import numpy as np
  from PIL import Image
  if not os.path.isdir(folder):
    raise UserError(f"image folder not found: {folder}")
  names, images, skipped = [], [], 0
  for name in sorted(os.listdir(folder)):
    if not name.lower().endswith(IMAGE_EXTENSIONS):
      continue
    try:
      with Image.open(os.path.join(folder, name)) as im:
        images.append(np.asarray(im.convert("RGB")))
      names.append(name)
    except (OSError, ValueError):
      skipped += 1
  if not images:
    raise UserError(f"no readable images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
  return names, images, skipped


def write_tsv(path: str, rows) -> None:
  """Tab-separated rows, written atomically (tabs/newlines in fields become spaces)."""
  clean = lambda s: " ".join(str(s).split())
  files.write_text(path, "".join("\t".join(clean(v) for v in row) + "\n" for row in rows))


def run(args) -> int:
  import time

  import numpy as np

  from vlgen_jax.sample.captioner import Captioner

  if args.batch_size < 1:
    raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
  if args.tokens and not args.output:
    raise UserError("--tokens needs --output FILE.tsv")
  output = args.output or os.path.join(args.images, "captions.tsv")
  if args.images and not args.output and os.path.exists(output):
    raise UserError(f"{output} exists (it may hold the images' prompts); "
                    "pass --output FILE.tsv to write elsewhere")
  captioner = Captioner.load(args.workdir, step=args.step, vq_workdir=args.vq_workdir,
                             batch_size=args.batch_size)
  defaults = captioner.config.caption
  beam = args.beam_size if args.beam_size is not None else defaults.beam_size
  pmi_weight = args.pmi_weight if args.pmi_weight is not None else defaults.pmi_weight
  plausibility = args.plausibility if args.plausibility is not None else defaults.plausibility
  mask_previous = (args.mask_previous if args.mask_previous is not None
                   else defaults.get("mask_previous", False))
  start = time.perf_counter()
  if args.images:
    names, images, skipped = read_images(args.images)
    tokens = captioner.encode_images(images, names)
    references = None
  else:
    from vlgen_jax.data.token_records import TokenRecordSource, decode_token_record
    source = TokenRecordSource(args.tokens, args.split)
    if source.num_tokens != captioner.spec.num_image_tokens:
      raise UserError(f"{args.tokens} has {source.num_tokens} tokens per image, the captioner "
                      f"expects {captioner.spec.num_image_tokens}")
    n = len(source) if args.num <= 0 else min(args.num, len(source))
    records = [decode_token_record(source[i]) for i in range(n)]
    tokens = np.stack([t for t, _ in records])
    references = [c for _, c in records]
    names, skipped = [str(i) for i in range(n)], 0
  captions, _ = captioner.caption(tokens, beam_size=beam, pmi_weight=pmi_weight,
                                  plausibility=plausibility, mask_previous=mask_previous)
  seconds = time.perf_counter() - start
  if references is None:
    write_tsv(output, zip(names, captions))
  else:
    write_tsv(output, zip(names, captions, references))
  print(f"captioned {len(captions)} images (beam {beam}, {seconds / len(captions) * 1e3:.1f} ms "
        f"per image; {skipped} unreadable files skipped) -> {output}")
  if references is not None:
    exact = np.mean([a == b for a, b in zip(captions, references)])
    print(f"exact match with the reference captions: {exact:.4f}")
  return 0
