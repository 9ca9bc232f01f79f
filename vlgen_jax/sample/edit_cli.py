"""`vlgen edit`: regenerate part of an image from a prompt with a trained run."""
from __future__ import annotations

import argparse
import os

from vlgen_jax.errors import UserError

HELP = "edit an image with a trained text-to-image run (inpaint a box/mask, outpaint, variations)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
  from vlgen_jax.sample.cli import add_sampling_arguments
  parser.add_argument("--workdir", required=True,
                      help="a t2i training workdir, or a `vlgen demo` workdir")
  parser.add_argument("--image", required=True, help="PNG of the run's resolution (any mode)")
  parser.add_argument("--prompt", required=True, help="caption of the edited image")
  region = parser.add_mutually_exclusive_group()
  region.add_argument("--box", help="x0,y0,x1,y1: pixels to regenerate (x1, y1 exclusive)")
  region.add_argument("--mask", help="mask PNG of the image's size: pixels > 127 are regenerated")
  region.add_argument("--keep-box",
                      help="x0,y0,x1,y1: keep this box, regenerate everything around it "
                           "(outpainting)")
  parser.add_argument("--variations", type=int, default=1, help="edits to draw (seeds differ)")
  parser.add_argument("--redraw", type=float, default=None,
                      help="re-draw only this random fraction of the region's tokens "
                           "(variations; without a region: of the whole image)")
  parser.add_argument("--outdir", required=True)
  parser.add_argument("--batch-size", type=int, default=16)
  add_sampling_arguments(parser)


def run(args) -> int:
  from vlgen_jax.sample import edit as edit_lib
  from vlgen_jax.sample.cli import sampling_overrides
  from vlgen_jax.runs import t2i_config
  from vlgen_jax.sample.generator import Generator
  from vlgen_jax.sample.outputs import write_outputs
  from vlgen_jax.sample.sampler import SamplingOptions
  import numpy as np

  if args.variations < 1:
    raise UserError(f"--variations must be >= 1, got {args.variations}")
  if args.box is None and args.mask is None and args.keep_box is None and args.redraw is None:
    raise UserError("say what to regenerate: --box, --mask, --keep-box or --redraw")
  # Everything the user could get wrong is checked before params are loaded.
  options = SamplingOptions.from_config(t2i_config(args.workdir), **sampling_overrides(args))
  gen = Generator.load(args.workdir, step=args.step, vq_workdir=args.vq_workdir,
                       mesh_overrides=args.mesh)
  resolution = gen.vq.resolution
  image = edit_lib.read_image(args.image, resolution)
  if args.box is not None:
    mask = edit_lib.box_mask(args.box, resolution)
  elif args.keep_box is not None:
    mask = edit_lib.box_mask(args.keep_box, resolution, outside=True)
  elif args.mask is not None:
    mask = edit_lib.read_mask(args.mask, resolution)
  else:
    mask = np.ones((resolution, resolution), bool)
  images, regions = edit_lib.edit_image(gen, image, mask, args.prompt, options,
                                        variations=args.variations, redraw=args.redraw,
                                        seed=args.seed, batch_size=args.batch_size)
  grid = write_outputs(args.outdir, images, [args.prompt] * len(images), info={
      "run": os.path.abspath(gen.run), "step": gen.step, "image": os.path.abspath(args.image),
      "evaluators": list(gen.config.evaluators)})
  from vlgen_jax.images import save_png
  save_png((regions[0] * 255).astype(np.uint8), os.path.join(args.outdir, "region.png"))
  print(f"wrote {len(images)} edit(s) of {args.image} to {args.outdir} (grid: {grid})")
  return 0
