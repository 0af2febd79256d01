"""The codebase's shape, checked from its source: small modules and functions, imports that run one
way (no circles; inference-side modules never reach the training loop), and no test hooks in the
product."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fer_flax"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 120
# Modules that run inference: none of them may import the training loop, even indirectly.
INFERENCE_SIDE = (
    "fer_flax.inference.evaluate",
    "fer_flax.inference.predict",
    "fer_flax.inference.engine",
    "fer_flax.inference.photos",
    "fer_flax.inference.video",
    "fer_flax.inference.webcam",
    "fer_flax.inference.annotate",
    "fer_flax.inference.faces.classify",
    "fer_flax.inference.explain",
    "fer_flax.inference.saliency",
    "fer_flax.inference.export",
)
TRAINING_LOOP = ("fer_flax.training.loop", "fer_flax.training.validation", "fer_flax.training.metric_window")


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


def test_the_graph_sees_the_package():
    assert {"fer_flax.training.loop", "fer_flax.inference.engine", "fer_flax.models.cnn"} <= set(MODULES)
    assert "fer_flax.core.steps" in GRAPH["fer_flax.training.loop"]
    assert "fer_flax.core.state" in _reachable("fer_flax.inference.evaluate")


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


@pytest.mark.parametrize("name", INFERENCE_SIDE)
def test_inference_never_imports_the_training_loop(name):
    assert not _reachable(name) & set(TRAINING_LOOP)


def test_no_test_hooks_in_the_product():
    for name, path in MODULES.items():
        assert "FER_FLAX_TEST" not in path.read_text(), name
        # Checkpointing goes through Orbax's public API only (a test patches its commit from outside).
        assert "orbax.checkpoint._src" not in path.read_text(), name
