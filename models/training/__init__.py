"""Fine-tuning MobileFaceNet or EdgeFace-XS with the project's losses, exported to ONNX.

- :mod:`models.training.bases`: the networks that can be fine-tuned and what differs between them (one table).
- :mod:`models.training.config`: :class:`~models.training.config.TrainConfig`, the typed configuration.
- :mod:`models.training.data`: detect + align a folder-per-identity set once (cached crops), the
  identity-disjoint split, validation identification top-1.
- :mod:`models.training.train`: the training loop (torch).
- :mod:`models.training.publish`: ONNX export with parity check, manifest entry and fragment, registration.
- :mod:`models.training.run`: all of it end to end, with the model card.
- :mod:`models.training.cli`: ``facebank train``.

This ``__init__`` imports nothing heavy; torch is imported by the submodules that need it.
"""
