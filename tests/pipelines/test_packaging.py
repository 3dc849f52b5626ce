"""The package's shape: one import name, the libraries' layering, one registry, one owner of the data dir."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FOLDERS = ("pacs", "augment", "models", "assets", "pipelines")


def _modules(*folders: str) -> Iterator[tuple[Path, ast.Module]]:
    for folder in folders:
        for path in sorted((REPO / folder).rglob("*.py")):
            yield path, ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _imported(tree: ast.Module) -> Iterator[str]:
    """Every module name an import statement names (at any depth: lazy imports count too)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def test_only_the_name_radaudit_is_importable_outside_the_repository(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}
    code = ("import importlib.util, radaudit.pipelines.definitions as d; "
            f"print(d.defs is not None, [n for n in {FOLDERS!r} if importlib.util.find_spec(n) is not None])")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "True []"
    failed = subprocess.run([sys.executable, "-c", "import models"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=60)
    assert failed.returncode == 1 and "No module named 'models'" in failed.stderr


@pytest.mark.parametrize("folder", [*FOLDERS, "benchmarks", "tests"])
def test_no_code_imports_a_folder_by_its_bare_name(folder: str) -> None:
    """A bare ``import models`` would load a second copy of a module beside ``radaudit.models``."""
    bare = [(path.relative_to(REPO).as_posix(), name) for path, tree in _modules(folder)
            for name in _imported(tree) if name.split(".")[0] in FOLDERS]
    assert bare == []


@pytest.mark.parametrize("folder, forbidden", [
    ("pacs", ("radaudit.augment", "radaudit.models", "radaudit.pipelines", "radaudit.assets", "dagster")),
    ("augment", ("radaudit.models", "radaudit.pipelines", "radaudit.assets", "dagster")),
    ("models", ("radaudit.pipelines", "radaudit.assets", "dagster", "radaudit.pacs.layout", "radaudit.pacs.cache")),
])
def test_the_libraries_import_only_downwards(folder: str, forbidden: tuple[str, ...]) -> None:
    found = [(path.relative_to(REPO).as_posix(), name) for path, tree in _modules(folder) for name in _imported(tree)
             if any(name == f or name.startswith(f + ".") for f in forbidden)]
    assert found == []


def test_no_model_or_augmentation_takes_a_data_dir() -> None:
    """``radaudit.pipelines.stages`` owns the data dir; the libraries take arrays, tensors and frames."""
    found = [(path.relative_to(REPO).as_posix(), node.lineno) for path, tree in _modules("models", "augment")
             for node in ast.walk(tree) if isinstance(node, ast.arg) and node.arg in ("data_dir", "data_path")]
    assert found == []


def test_the_data_dir_layout_and_the_method_registry_are_declared_once() -> None:
    declared: dict[str, list[str]] = {}
    for path, tree in _modules(*FOLDERS):
        for node in tree.body:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, ast.AnnAssign) else []
            for t in targets:
                if isinstance(t, ast.Name) and t.id.isupper():
                    declared.setdefault(t.id, []).append(path.relative_to(REPO).as_posix())
    assert declared["METHODS"] == ["models/methods.py"]
    assert declared["DEFAULT_IMAGE_SIZE"] == ["augment/__init__.py"]
    from radaudit.pacs import layout

    for name in layout.__all__:
        if name.isupper():
            assert declared.get(name) == ["pacs/layout.py"], name
