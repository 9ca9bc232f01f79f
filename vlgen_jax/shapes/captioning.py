"""How well a captioner reads `shapes` images (docs/captioning.md).

For the first `num` scenes of a split, the real render is VQ-encoded with the
captioner's VQ and captioned; the pixel detector then checks the *generated*
caption against the real image (`caption_fidelity`: the fraction of images
that satisfy their generated caption; a caption outside the shapes grammar
fails). `exact_match` compares with the dataset's caption word for word, and
R-precision ranks each image's own caption among R (vlgen_jax/eval/r_precision.py).
"""
from __future__ import annotations

import numpy as np

from vlgen_jax.eval.r_precision import r_precision
from vlgen_jax.shapes import fidelity, scenes


def satisfies(image: np.ndarray, caption: str) -> bool:
  """The detector finds exactly the caption's objects (False if it does not parse)."""
  try:
    return bool(fidelity.score(image, caption)["satisfied"])
  except ValueError:
    return False


def shapes_split(split: str, num: int, resolution: int):
  """(uint8 renders, captions) of the first `num` scenes of a shapes split."""
  drawn = [scenes.sample_scene(split, i) for i in range(num)]
  return ([scenes.render(s, resolution) for s in drawn],
          [scenes.build_caption(s.objects) for s in drawn])


def shapes_caption_eval(captioner, split: str, num: int, *, beam_size: int = 1, R: int = 100,
                        seed: int = 0, pmi: bool = True, pmi_weight: float = 0.0,
                        plausibility: float = 0.0, mask_previous: bool = False
                        ) -> tuple[dict, list[str]]:
  """(caption fidelity, exact match and (R > 0) R-precision on a shapes split,
  the generated captions)."""
  images, references = shapes_split(split, num, captioner.vq.resolution)
  tokens = captioner.encode_images(images)
  captions, _ = captioner.caption(tokens, beam_size=beam_size, pmi_weight=pmi_weight,
                                  plausibility=plausibility, mask_previous=mask_previous)
  out = {"split": split, "n": num, "beam_size": beam_size, "pmi_weight": pmi_weight,
         "plausibility": plausibility, "mask_previous": mask_previous,
         "caption_fidelity": float(np.mean([satisfies(i, c) for i, c in zip(images, captions)])),
         "exact_match": float(np.mean([c == r for c, r in zip(captions, references)]))}
  if R:
    rp = r_precision(captioner, tokens, references, R, seed, pmi=pmi)
    out.update({f"r_precision_{k}": v for k, v in rp.items() if k.startswith("top")}, R=R)
  return out, captions
