"""Accuracy of the service's pipeline: LFW verification and identification, threshold calibration.

Everything runs through the service's own decode → detect → align → embed code
(:func:`service.pipeline.factory.build_pipeline`); nothing here crops faces another way.

- :mod:`models.evaluation.protocol`: the protocol maths on scores (numpy only).
- :mod:`models.evaluation.lfw`: ``pairs.txt``, the identification split, ``--limit`` subsets.
- :mod:`models.evaluation.faces`: one face per image through the pipeline, cached by image sha256 and model.
- :mod:`models.evaluation.run`: :func:`~models.evaluation.run.evaluate_lfw`,
  :func:`~models.evaluation.run.calibrate_on_folder`.
- :mod:`models.evaluation.cli`: ``facebank eval lfw`` and ``facebank eval calibrate``.
"""
