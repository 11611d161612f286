"""Model-making code: network definitions, ONNX export and the model manifest.

Serving (``service/``) reads only :mod:`models.manifest` from here; everything else may import torch.
"""
