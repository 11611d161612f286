"""Models prepared once per test session (kept for the evaluation and training tests' imports)."""

from tests.conftest import prepared_model_dir

__all__ = ["prepared_model_dir"]
