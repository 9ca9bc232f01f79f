"""Editing on shapes: replace one object of each validation image by another.

For validation example i (rendered exactly from vlgen_jax/shapes/scenes.py),
its first object is replaced by the first object of example i+1 moved into
the same cell (skipped when identical). The region regenerated is the box any
object in that cell can occupy (a large box with full jitter) plus the old
object's box, minus the other object's box; `vlgen edit`'s library does the
rest (VQ-encode, regenerate, decode, paste). Success: the detector finds the
new caption satisfied (the new object in its cell AND the other object
unchanged); every pixel outside the region must equal the input (checked,
exactly). Prints a table and one JSON object.

  python benchmarks/edit_shapes.py --workdir RUN --num 200 [--steps 12]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def region_for(scene, index: int, resolution: int):
  import numpy as np
  from vlgen_jax.shapes import scenes
  scale = resolution // scenes.BASE_RESOLUTION
  obj = scene.objects[index]
  side = scenes.SIZE_PX["large"]
  lo_x = scenes._box_origin(obj.col, side, -scenes.JITTER_PX)
  hi_x = scenes._box_origin(obj.col, side, scenes.JITTER_PX) + side
  lo_y = scenes._box_origin(obj.row, side, -scenes.JITTER_PX)
  hi_y = scenes._box_origin(obj.row, side, scenes.JITTER_PX) + side
  mask = np.zeros((resolution, resolution), bool)
  mask[lo_y * scale:hi_y * scale, lo_x * scale:hi_x * scale] = True
  boxes = scene.boxes(resolution)
  x, y, s = boxes[index]
  mask[max(y - 1, 0):y + s + 1, max(x - 1, 0):x + s + 1] = True
  for j, (x, y, s) in enumerate(boxes):
    if j != index:  # keep the other object and the gap around it
      g = scenes.MIN_GAP_PX // 2 * scale
      mask[max(y - g, 0):y + s + g, max(x - g, 0):x + s + g] = False
  return mask


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", required=True)
  p.add_argument("--num", type=int, default=200)
  p.add_argument("--steps", type=int, default=None)
  p.add_argument("--cfg-scale", type=float, default=None)
  p.add_argument("--temperature", type=float, default=None)
  p.add_argument("--step", type=int, default=None)
  p.add_argument("--batch-size", type=int, default=50)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--json-out", default="")
  p.add_argument("--grid-out", default="")
  args = p.parse_args(argv)

  import numpy as np
  from vlgen_jax import files
  from vlgen_jax.images import make_grid, save_png
  from vlgen_jax.sample import edit as edit_lib
  from vlgen_jax.runs import t2i_config
  from vlgen_jax.sample.generator import Generator
  from vlgen_jax.sample.sampler import SamplingOptions
  from vlgen_jax.shapes import fidelity, scenes
  from vlgen_jax.tasks.families import get_family

  options = SamplingOptions.from_config(t2i_config(args.workdir), steps=args.steps,
                                        cfg_scale=args.cfg_scale, temperature=args.temperature)
  gen = Generator.load(args.workdir, step=args.step)
  res, grid = gen.vq.resolution, gen.spec.image_grid
  images, masks, prompts = [], [], []
  i = 0
  while len(images) < args.num:
    scene, donor = scenes.sample_scene("validation", i), scenes.sample_scene("validation", i + 1)
    i += 1
    old = scene.objects[0]
    new = dataclasses.replace(donor.objects[0], row=old.row, col=old.col)
    if new == old:
      continue
    images.append(scenes.render(scene, res))
    masks.append(region_for(scene, 0, res))
    prompts.append(scenes.build_caption([new, *scene.objects[1:]]))
  images, masks = np.stack(images), np.stack(masks)
  known = np.asarray(gen.vq.encode(images)).reshape(len(images), -1)
  regen = np.stack([edit_lib.regenerated_tokens(m, grid) for m in masks])
  start = time.perf_counter()
  _, tokens = gen.edit(prompts, known, ~regen, options, seed=args.seed,
                       batch_size=args.batch_size)
  seconds = time.perf_counter() - start
  decoded = gen.vq.decode_uint8(tokens.reshape(len(images), *grid))
  edited = np.where(masks[..., None], decoded, images)
  outside_identical = bool(np.array_equal(edited[~masks], images[~masks]))
  kept_ok = bool(np.array_equal(tokens[~regen], known[~regen]))
  scores = [fidelity.score(im, cap) for im, cap in zip(edited, prompts)]
  success = float(np.mean([s["satisfied"] for s in scores]))
  result = {"run": os.path.abspath(gen.run), "step": gen.step, "family": gen.spec.family,
            "editing": get_family(gen.spec.family).editing, "num": len(images),
            "steps": options.steps, "cfg_scale": options.cfg_scale,
            "temperature": options.temperature, "success": success,
            "outside_pixels_identical": outside_identical, "kept_tokens_identical": kept_ok,
            "edit_seconds": seconds}
  print(f"{'family':14s} {'n':>5s} {'success':>8s} {'outside==':>10s} {'s':>7s}")
  print(f"{gen.spec.family:14s} {len(images):5d} {success:8.3f} {str(outside_identical):>10s} "
        f"{seconds:7.1f}")
  if args.grid_out:
    pairs = [im for k in range(min(16, len(images))) for im in (images[k], edited[k])]
    save_png(make_grid(pairs, cols=8), args.grid_out)
  if args.json_out:
    files.write_json(args.json_out, result)
  print(json.dumps(result))
  return 0 if outside_identical and kept_ok else 1


if __name__ == "__main__":
  sys.exit(main())
