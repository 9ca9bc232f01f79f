"""The quick start with the masked family: `vlgen demo --config
configs/demo_quickstart_masked.py` runs the same stages as
configs/demo_quickstart.py, training configs/t2i_shapes_masked.py (MaskGIT
parallel decoding, 12 steps) instead of the AR encoder-decoder."""
import os

from vlgen_jax.config import load_config


def get_config():
  c = load_config(os.path.join(os.path.dirname(__file__), "demo_quickstart.py"))
  c.t2i.config = "configs/t2i_shapes_masked.py"
  c.t2i.overrides = ("total_steps=6000", "eval_every=0", "checkpoint_every=2000")
  return c
