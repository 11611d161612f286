"""ONNX export of the project's networks and the ``models prepare`` step that runs it.

This package's ``__init__`` stays torch-free: :mod:`models.export.onnx_export` imports torch,
:mod:`models.export.prepare` imports it only when it has to export.
"""

# Bump whenever a change to the network definitions or the export code changes the exported graphs;
# `prepare_models` re-exports every model whose prepared ONNX was made by another version.
EXPORT_VERSION = "1"
