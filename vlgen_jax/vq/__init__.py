"""VQ image tokenizer: images <-> grids of discrete codes (docs/vq.md).

Train with `vlgen train --config configs/vq_shapes.py`; encode a dataset for
stage 2 with `vlgen encode`; in Python, `vlgen_jax.vq.api.VQTokenizer`.
"""
