"""Imports run one way: `models` and `bench` may use `service`, never the reverse; inside `service`, the
lower layers (runtime, storage, index, schemas, config) import nothing above them. Function-level imports
count too: a lazy import is still a dependency."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
OUR_PACKAGES = {"service", "models", "bench", "migrations"}

# What each package, or layer of `service`, may import of ours besides itself. A layer of `service` not
# listed may import any of `service`.
ALLOWED = {
    "service": {"service"},
    "models": {"service", "models"},
    "migrations": {"service"},
    "service.config": set(),
    "service.schemas": set(),
    "service.runtime": set(),
    "service.storage": {"migrations"},
    "service.index": {"service.schemas", "service.config"},
    "service.pipeline": {"service.runtime", "service.schemas", "service.config"},
}


def _layer(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "service" and len(parts) > 1 else parts[0]


def allowed(importer: str, imported: str) -> bool:
    own, target = _layer(importer), _layer(imported)
    if own == target:
        return True
    if "." in own and own in ALLOWED:
        return target in ALLOWED[own]
    return imported.split(".")[0] in ALLOWED[importer.split(".")[0]]


def _imports(path: Path) -> list[str]:
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
    return [name for name in found if name.split(".")[0] in OUR_PACKAGES]


def test_imports_run_from_models_and_bench_to_service_and_never_back() -> None:
    problems = []
    for package in ("service", "models", "migrations"):
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            module = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts)
            problems += [
                f"{path.relative_to(REPO_ROOT)} imports {imported}"
                for imported in _imports(path)
                if not allowed(module, imported)
            ]
    assert problems == []


def test_a_lazy_import_inside_a_function_is_found(tmp_path: Path) -> None:
    snippet = tmp_path / "x.py"
    snippet.write_text("def f():\n    from models.export.prepare import prepare_models\n", encoding="utf-8")
    assert _imports(snippet) == ["models.export.prepare"]


@pytest.mark.parametrize(
    ("importer", "imported", "expected"),
    [
        ("service.api.app", "models.manifest", False),
        ("service.cli.models", "bench.cli", False),
        ("service.runtime.models", "service.pipeline.detect", False),
        ("service.storage.repository", "service.config", False),
        ("service.pipeline.detect", "service.runtime.stages", True),
        ("service.api.app", "service.gallery", True),
        ("models.export.prepare", "service.runtime.manifest", True),
        ("models.export.prepare", "bench.data", False),
    ],
)
def test_the_rules_say_which_way_imports_run(importer: str, imported: str, expected: bool) -> None:
    assert allowed(importer, imported) is expected
