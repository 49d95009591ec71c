"""The dependency direction of docs/DESIGN.md, enforced on the source with ``ast``.

Layers, bottom to top (a module may import its own package and anything lower):

    4  cli, serving, bench   (cli may import serving and bench: it is the composition root; never the reverse)
    3.5 evaluation (everything but evaluation.metrics: offline evaluation builds on pipeline,
       see docs/architecture.md; pipeline.build takes the evaluator as an argument)
    3  pipeline
    2  retrieval, ranking, rerank, registry
    1  data, features, training, evaluation.metrics
    0  types, errors, config (and the ``feedrank`` package itself: __version__);
       inside layer 0, ``config`` may import ``errors``; ``types`` and ``errors`` import nothing

Imports inside functions count too (every ``Import``/``ImportFrom`` node in the file).
"""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PKG = SRC / "feedrank"

LAYERS: dict[str, float] = {
    "feedrank": 0,
    "feedrank.errors": 0,
    "feedrank.types": 0,
    "feedrank.config": 0.5,  # config raises ConfigError
    "feedrank.data": 1,
    "feedrank.features": 1,
    "feedrank.training": 1,
    "feedrank.evaluation.metrics": 1,
    "feedrank.retrieval": 2,
    "feedrank.ranking": 2,
    "feedrank.rerank": 2,
    "feedrank.registry": 2,
    "feedrank.pipeline": 3,
    "feedrank.evaluation": 3.5,  # evaluation.offline imports pipeline, never the reverse
    "feedrank.serving": 4,
    "feedrank.planning": 3.5,  # reads benchmark results, encodes a typical event (data)
    "feedrank.bench": 4.25,  # scenarios measure serving (and training): above both, below cli
    "feedrank.cli": 4.5,  # thin commands over everything below
    "feedrank.train": 4.6,  # `python -m feedrank.train`: the torchrun worker entrypoint; runs cli.train, so just above cli
}
SIBLINGS_THAT_MUST_NOT_MEET = ("feedrank.retrieval", "feedrank.ranking", "feedrank.rerank")
IO_MODULES = ("pathlib", "os", "time", "socket", "pyarrow", "duckdb", "io", "shutil", "sqlite3", "subprocess")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


@lru_cache(maxsize=None)
def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _is_package(mod: str) -> bool:
    p = _modules().get(mod)
    return p is not None and p.name == "__init__.py"


def _unit(mod: str) -> str:
    """The layer unit a feedrank module belongs to (longest prefix in LAYERS)."""
    parts = mod.split(".")
    for n in range(len(parts), 1, -1):
        cand = ".".join(parts[:n])
        if cand in LAYERS:
            # feedrank.evaluation's package __init__ and other modules are layer 3, but
            # feedrank.evaluation.metrics (and anything under it) is its own unit
            return cand
    if mod == "feedrank":
        return mod
    raise AssertionError(f"{mod}: not in any layer; add it to LAYERS (and to docs/architecture.md)")


def _imports(mod: str) -> list[tuple[int, str]]:
    """Every module ``mod`` imports, anywhere in the file: (line, absolute dotted name).

    ``from X import a`` yields ``X.a`` when that is a module, else ``X``."""
    path = _modules()[mod]
    tree = ast.parse(path.read_text(), filename=str(path))
    pkg = mod if _is_package(mod) else mod.rpartition(".")[0]
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = pkg.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.append((node.lineno, sub if sub in _modules() else base))
    return out


def _internal_imports(mod: str) -> list[tuple[int, str]]:
    return [(ln, t) for ln, t in _imports(mod) if t == "feedrank" or t.startswith("feedrank.")]


def _where(mod: str, line: int) -> str:
    return f"{_modules()[mod].relative_to(SRC.parent)}:{line}"


def _violations_layering() -> list[tuple[str, str, str]]:
    """(module, imported module, where) for every import that is not downward."""
    bad = []
    for mod in _modules():
        unit = _unit(mod)
        for line, target in _internal_imports(mod):
            tunit = _unit(target)
            if tunit == unit:
                continue
            # importing feedrank.evaluation.metrics from inside feedrank.evaluation is fine
            # (it is lower), so is anything in a strictly lower layer
            if LAYERS[tunit] < LAYERS[unit]:
                continue
            if (mod, target, _where(mod, line)) not in bad:
                bad.append((mod, target, _where(mod, line)))
    return bad


# Layering exceptions that are tolerated (none today; add one only with a reason).
KNOWN_VIOLATIONS: set[tuple[str, str]] = set()


def test_every_module_is_in_a_layer():
    assert len(_modules()) > 20
    for mod in _modules():
        _unit(mod)


def test_no_new_layering_violations():
    new = [f"{w}: {m} imports {t}" for m, t, w in _violations_layering() if (m, t) not in KNOWN_VIOLATIONS]
    assert not new, "layering violations:\n" + "\n".join(new)


def test_imports_only_own_package_or_lower_layers():
    bad = [f"{w}: {m} imports {t}" for m, t, w in _violations_layering()]
    assert not bad, "layering violations:\n" + "\n".join(bad)


def _unit_graph() -> dict[str, set[str]]:
    g: dict[str, set[str]] = {}
    for mod in _modules():
        u = _unit(mod)
        g.setdefault(u, set()).update(_unit(t) for _, t in _internal_imports(mod) if _unit(t) != u)
    return g


def test_no_import_cycles_between_packages():
    g = _unit_graph()
    cycles = sorted({tuple(sorted((a, b))) for a in g for b in g[a] if a in g.get(b, set())})
    assert not cycles, cycles


def test_retrieval_ranking_rerank_never_import_each_other():
    bad = []
    for mod in _modules():
        unit = _unit(mod)
        if unit not in SIBLINGS_THAT_MUST_NOT_MEET:
            continue
        for line, target in _internal_imports(mod):
            tunit = _unit(target)
            if tunit in SIBLINGS_THAT_MUST_NOT_MEET and tunit != unit:
                bad.append(f"{_where(mod, line)}: {mod} imports {target}")
    assert not bad, "\n".join(bad)


def _is_training_code(mod: str) -> bool:
    return (
        mod == "feedrank.training"
        or mod.startswith("feedrank.training.")
        or mod.rsplit(".", 1)[-1] == "train"
        or mod == "feedrank.pipeline.build"
    )


def _closure(start: str) -> dict[str, str]:
    """Every feedrank module loaded by importing ``start`` (parent packages included):
    module -> the module that pulled it in."""
    seen: dict[str, str] = {start: ""}
    todo = [start]
    while todo:
        mod = todo.pop()
        deps = [t for _, t in _internal_imports(mod)]
        parts = mod.split(".")
        deps += [".".join(parts[:n]) for n in range(1, len(parts))]  # parent __init__ runs first
        for t in deps:
            if t in _modules() and t not in seen:
                seen[t] = mod
                todo.append(t)
    return seen


def test_serving_never_imports_training_code():
    serving = [m for m in _modules() if _unit(m) == "feedrank.serving"]
    assert serving
    bad = []
    for mod in serving:
        for line, target in _internal_imports(mod):
            if _is_training_code(target):
                bad.append(f"{_where(mod, line)}: {mod} imports {target}")
        # transitively too: serving must be importable on a box without training code
        for dep, via in _closure(mod).items():
            if _is_training_code(dep):
                bad.append(f"{mod} loads {dep} (via {via})")
    assert not bad, "\n".join(sorted(set(bad)))


def test_training_code_classifier():
    assert _is_training_code("feedrank.retrieval.train")
    assert _is_training_code("feedrank.training.common")
    assert _is_training_code("feedrank.pipeline.build")
    assert not _is_training_code("feedrank.pipeline.recommender")


@pytest.mark.parametrize("mod", ["feedrank.rerank.policies", "feedrank.rerank", "feedrank.evaluation.metrics",
                                 "feedrank.evaluation.metrics._inputs", "feedrank.evaluation.metrics.scored",
                                 "feedrank.evaluation.metrics.lists", "feedrank.evaluation.metrics.beyond"])
def test_pure_modules_do_no_io(mod):
    assert mod in _modules(), f"{mod} is gone; update this test"
    path = _modules()[mod]
    tree = ast.parse(path.read_text())
    bad = []
    for line, target in _imports(mod):
        if target.split(".")[0] in IO_MODULES:
            bad.append(f"{_where(mod, line)}: imports {target}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "open":
            bad.append(f"{_where(mod, node.lineno)}: calls open()")
    assert not bad, "\n".join(bad)


def test_every_rerank_module_is_pure():
    mods = [m for m in _modules() if _unit(m) == "feedrank.rerank"]
    assert mods
    for mod in mods:
        targets = [t for _, t in _imports(mod)]
        assert not [t for t in targets if t.split(".")[0] in IO_MODULES], mod


def test_types_does_not_import_torch():
    targets = [t for _, t in _imports("feedrank.types")]
    assert not [t for t in targets if t.split(".")[0] == "torch"], targets


def test_import_resolution_handles_relative_and_from_imports():
    # sanity checks of the helper itself, on real files
    targets = {t for _, t in _imports("feedrank.cli.main")}
    assert "feedrank" in targets and "feedrank.cli.data" in targets
    assert "feedrank.pipeline.recommender" in {t for _, t in _imports("feedrank.serving.factory")}  # function-level import
    assert _unit("feedrank.evaluation.metrics") == "feedrank.evaluation.metrics"
    assert _unit("feedrank.evaluation.offline") == "feedrank.evaluation"
    assert _unit("feedrank") == "feedrank"
    with pytest.raises(AssertionError, match="not in any layer"):
        _unit("feedrank.brand_new_package.x")
