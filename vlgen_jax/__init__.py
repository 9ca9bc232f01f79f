"""vlgen_jax: text -> SentencePiece ids -> text encoder -> causal image-token
decoder -> VQ decoder -> pixels, trained with jax.jit + NamedSharding.

Stages, by folder: `data/` (shapes dataset, Grain input), `text/`
(SentencePiece), `vq/` (image tokenizer), `model/` (text-to-image transformer),
`train/` (mesh, sharding, step, checkpoints), `sample/`, `eval/`.
"""
__version__ = "0.1.0"
