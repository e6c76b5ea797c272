"""The package's folders have one order (README "Layout"): a module imports only from its own folder
or a lower one, never the package root below the CLI, and no private name of another folder.

Every import counts, at module level, inside functions and under ``TYPE_CHECKING``: an import
that runs late is still an arrow between folders.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "colzero"

#: lowest first: scoring is tensor arithmetic; the model encodes (and returns scoring's packed
#: types); data reads files and turns rows into batches for a model; losses score those batches;
#: evaluation searches and scores datasets with a model; training runs phases and recipes (and
#: evaluates them); index and serve build and serve a searchable corpus; experiment runs grids of
#: recipes; the CLI sits on top of everything.
ORDER = (
    "scoring",
    "model",
    "data",
    "losses",
    "evaluation",
    "training",
    "index",
    "serve",
    "experiment",
    "cli",
)

#: private cross-module imports inside index/ that the index split (issue 14, item 4) removes;
#: delete an entry as soon as its module imports public names only
PENDING_PRIVATE: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class Import:
    module: str  # importing module, dotted
    target: str  # imported module, dotted
    names: tuple[str, ...]
    line: int


def module_name(path: Path) -> str:
    parts = ["colzero", *path.relative_to(SRC).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[Import]:
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out += [Import(name, a.name, (), node.lineno) for a in node.names if a.name.startswith("colzero")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target == "colzero" or target.startswith("colzero."):
                out.append(Import(name, target, tuple(a.name for a in node.names), node.lineno))
    return out


def folder(module: str) -> str | None:
    """``colzero.<folder>.…`` -> folder; None for the package root and its top-level modules."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (SRC / parts[1]).is_dir()) else None


def all_imports() -> list[Import]:
    return [imp for path in sorted(SRC.rglob("*.py")) for imp in imports(path)]


def test_every_folder_has_a_place_in_the_order():
    folders = {p.name for p in SRC.iterdir() if p.is_dir() and any(p.glob("*.py"))}
    assert folders == set(ORDER), "add the new folder to ORDER (and the README's Layout section)"


def test_no_import_from_a_higher_folder():
    upward = []
    for imp in all_imports():
        here, there = folder(imp.module), folder(imp.target)
        if here is None or there is None or here == there:
            continue
        if ORDER.index(there) > ORDER.index(here):
            upward.append(f"{imp.module}:{imp.line} imports {imp.target} ({here} -> {there})")
    assert not upward, "\n".join(upward)


def test_top_level_modules_sit_below_every_folder():
    """``colzero/_version.py``, ``colzero/schema.py``: importable from anywhere, so they import no folder."""
    found = [
        f"{imp.module}:{imp.line} imports {imp.target}"
        for imp in all_imports()
        if imp.module != "colzero" and folder(imp.module) is None and folder(imp.target) is not None
    ]
    assert not found, "\n".join(found)


def test_only_the_cli_imports_the_package_root():
    found = [
        f"{imp.module}:{imp.line} imports {imp.target} {imp.names}"
        for imp in all_imports()
        if imp.target == "colzero" and folder(imp.module) not in (None, "cli")
    ]
    assert not found, "\n".join(found)


def test_no_private_name_from_another_module():
    found = []
    for imp in all_imports():
        if imp.target == imp.module or (imp.module, imp.target) in PENDING_PRIVATE:
            continue
        private = [n for n in imp.names if n.startswith("_") and not n.startswith("__")]
        hidden_module = [p for p in imp.target.split(".")[1:] if p.startswith("_") and p != "_version"]
        if private or hidden_module:
            found.append(f"{imp.module}:{imp.line} imports {private or hidden_module} from {imp.target}")
    assert not found, "\n".join(found)


@pytest.mark.parametrize(
    ("module", "target", "expected"),
    [
        ("colzero.model.colbert", "colzero.scoring.packed", True),
        ("colzero.scoring.search", "colzero.model.base", False),
        ("colzero.data.mining", "colzero.evaluation.metrics", False),
    ],
)
def test_the_order_check_itself(module, target, expected):
    assert (ORDER.index(folder(target)) <= ORDER.index(folder(module))) is expected
