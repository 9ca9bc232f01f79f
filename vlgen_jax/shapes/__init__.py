"""`shapes`: the embedded procedural dataset, as one plug-in.

Everything that knows the shapes grammar lives here: the scene generator and
captions (`scenes`), the TFDS builder (`tfds_builder`), the pixel detector
(`detector`), caption fidelity (`fidelity`), the registered evaluator
(`evaluator`) and `vlgen data shapes` (`cli`). Generic code (data pipeline,
tasks, trainer, sampler, eval core) never imports this package; it reaches it
only through registries (`data.name = "shapes/..."`, evaluator "shapes") so
a run on the user's own data loads none of it. Spec: docs/shapes.md.
"""
