"""The package's import graph: the interop layer on top of models (cycles: tests/test_layout.py).

Function-level (lazy) imports are left out of the cycle check: they are how a command keeps torch
out of ``transferlab --help``. ``models`` must not import ``interop`` at module level (interop
builds on models, not the other way round).
"""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "transferlab"


def _modules() -> dict[str, Path]:
    out = {}
    for p in SRC.rglob("*.py"):
        parts = list(p.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _module_level_imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = [n for top in tree.body if not isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
             for n in ast.walk(top)]
    nodes += [n for top in tree.body if isinstance(top, ast.ClassDef) for n in top.body
              if isinstance(n, (ast.Import, ast.ImportFrom))]
    found: set[str] = set()
    for n in nodes:
        if isinstance(n, ast.ImportFrom):
            base = pkg.split(".")[: len(pkg.split(".")) - (n.level - 1)] if n.level else []
            target = ".".join(base + ([n.module] if n.module else [])) if n.level else (n.module or "")
            for a in n.names:
                full = f"{target}.{a.name}"
                found.add(full if full in known else target)
        elif isinstance(n, ast.Import):
            found.update(a.name for a in n.names)
    return {m for m in found if m in known and m != name}


def _graph() -> dict[str, set[str]]:
    known = _modules()
    return {m: _module_level_imports(m, p, known) for m, p in known.items()}


def test_models_do_not_import_interop_at_module_level():
    graph = _graph()
    bad = sorted(f"{m} -> {t}" for m, ts in graph.items() if m.startswith("transferlab.models")
                 for t in ts if t.startswith("transferlab.interop"))
    assert not bad, bad
