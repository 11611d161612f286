"""Model-making code: network definitions, losses, training, ONNX export and evaluation.

It may import ``service`` (the manifest, the pipeline); ``service`` never imports it. Everything here may
import torch.
"""
