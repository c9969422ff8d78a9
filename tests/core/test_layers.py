"""Dependencies point down the layer table of DESIGN.md §3: nothing imports upward, and
the sync pipeline knows the target contract only, none of the object repository."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "openbdr"
UPPER = ("openbdr.control", "openbdr.web", "openbdr.agent", "openbdr.cli")
LOWER = ("store", "capture", "volume", "sync.py", "restore.py", "drill", "blocks.py",
         "extents.py", "chunk.py")
REPOSITORY_INTERNALS = ("openbdr.store.objects", "openbdr.store.index", "openbdr.store.blobs",
                        "openbdr.store.directory", "openbdr.store.s3")


def _imports(path: Path) -> set[str]:
    """Absolute names of every module `path` imports (relative imports resolved)."""
    package = ".".join(path.relative_to(SRC.parent).with_suffix("").parts[:-1])
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            out.add(name)
            out.update(f"{name}.{a.name}" for a in node.names)
    return out


def _modules(*names: str) -> list[Path]:
    out: list[Path] = []
    for n in names:
        p = SRC / n
        out.extend(sorted(p.rglob("*.py")) if p.is_dir() else [p])
    return out


def test_nothing_imports_upward() -> None:
    bad = {
        f"{p.relative_to(SRC)} imports {m}"
        for p in _modules(*LOWER)
        for m in _imports(p)
        if m.startswith(UPPER)
    }
    assert not bad, sorted(bad)


def test_the_pipeline_knows_only_the_contracts() -> None:
    bad = {m for m in _imports(SRC / "sync.py") if m.startswith(REPOSITORY_INTERNALS)}
    assert not bad, sorted(bad)


def test_the_check_sees_imports() -> None:
    """The checker itself: it finds a known upward import and a known downward one."""
    assert "openbdr.store.target.Target" in _imports(SRC / "sync.py")
    assert any(m.startswith("openbdr.control") for m in _imports(SRC / "control" / "drills.py"))
