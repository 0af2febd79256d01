"""The codebase's shape, checked from its source: packages in layers whose imports run one way (down),
no import circles, small modules and functions, and no test hooks in the product."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fer_flax"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 120
# The layers, bottom to top: a module may import modules of its own layer and the layers below, never
# one above. A layer is a set of packages (or top-level modules) of fer_flax; the top-level command
# aliases (`python -m fer_flax.evaluate`, ...) are the top layer with `main`.
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"base"}),
    frozenset({"data", "models", "cpu"}),
    frozenset({"config"}),
    frozenset({"core"}),
    frozenset({"run"}),
    frozenset({"cli", "runtime"}),
    frozenset({"inference"}),
    frozenset({"training"}),
    frozenset({"research"}),
)
PACKAGES = ("base", "config", "core", "run", "training", "inference", "research", "data", "models", "cpu")


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The fer_flax modules `name` imports at module level or inside functions."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            submodules = {f"{base}.{a.name}" for a in node.names} & set(MODULES)
            found.update(submodules)
            if len(submodules) < len(node.names):  # names defined in `base` itself
                found.add(base)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _reachable(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in GRAPH[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def _unit(name: str) -> str:
    """The package (or top-level module) of fer_flax that module `name` belongs to."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "fer_flax"


def _layer(name: str) -> int:
    unit = _unit(name)
    for i, layer in enumerate(LAYERS):
        if unit in layer:
            return i
    return len(LAYERS)  # main and the command aliases: the top


def test_the_graph_sees_the_package():
    assert {"fer_flax.training.loop", "fer_flax.inference.engine", "fer_flax.models.cnn"} <= set(MODULES)
    assert "fer_flax.training.loop" in _reachable("fer_flax.main")
    assert "fer_flax.run.trained" in _reachable("fer_flax.inference.evaluate")
    assert _layer("fer_flax.main") == len(LAYERS) and _layer("fer_flax.evaluate") == len(LAYERS)


def test_every_package_has_a_layer_and_says_what_it_holds():
    units = {_unit(n) for n in MODULES if n.count(".") >= 1 and MODULES[n].parent != PACKAGE}
    assert units == set(PACKAGES)
    assert set().union(*LAYERS) == {*PACKAGES, "cli", "runtime"}
    for unit in PACKAGES:
        doc = ast.get_docstring(ast.parse((PACKAGE / unit / "__init__.py").read_text()))
        assert doc and len(doc.split()) >= 12, f"fer_flax/{unit}/__init__.py needs a docstring"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_go_down_the_layers(name):
    up = {m for m in GRAPH[name] if _layer(m) > _layer(name)}
    assert not up, f"{name} (layer {_layer(name)}) imports higher layers: {sorted(up)}"


def test_no_import_circles_between_packages():
    edges = {(_unit(a), _unit(b)) for a in GRAPH for b in GRAPH[a] if _unit(a) != _unit(b)}
    for a, b in edges:
        assert (b, a) not in edges, f"fer_flax.{a} and fer_flax.{b} import each other"


def test_inference_never_imports_training_or_research():
    for name in MODULES:
        if _unit(name) == "inference":
            assert not {_unit(m) for m in _reachable(name)} & {"training", "research"}, name


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_and_functions_are_small(name):
    source = MODULES[name].read_text()
    assert len(source.splitlines()) <= MAX_MODULE_LINES, f"{name} has over {MAX_MODULE_LINES} lines"
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = node.end_lineno - node.lineno + 1
            assert length <= MAX_FUNCTION_LINES, f"{name}.{node.name} has {length} lines"


def test_no_import_circles():
    # Package __init__ files re-export their own submodules; a circle through one is not a circle
    # between modules.
    for name in MODULES:
        if MODULES[name].name != "__init__.py":
            assert name not in _reachable(name), f"{name} imports itself through {GRAPH[name]}"


def test_no_test_hooks_in_the_product():
    for name, path in MODULES.items():
        assert "FER_FLAX_TEST" not in path.read_text(), name
        # Checkpointing goes through Orbax's public API only (a test patches its commit from outside).
        assert "orbax.checkpoint._src" not in path.read_text(), name


def test_inference_imports_no_optimizer_loss_or_mixing():
    # The train state (with its optimizer state) and the training maths stay out of every inference
    # import: restoring a run (run.trained) builds the model (core.model) and reads weights only.
    training_maths = {f"fer_flax.core.{m}" for m in ("state", "optim", "losses", "mixing")}
    for name in MODULES:
        if _unit(name) == "inference":
            assert not _reachable(name) & training_maths, f"{name}: {_reachable(name) & training_maths}"
