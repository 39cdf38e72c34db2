"""The package's layout: no import cycle anywhere (function-level imports included), no import
from train/ or the model half into study/, no private name imported from another module, no
module much longer than 400 lines, switches resolved once (the hot path reads no switch)."""
import ast
import dataclasses
import functools
from pathlib import Path

import pytest
import torch

import smallmind_torch
from smallmind_torch import FORMS, GPT, OptConfig, runtime
from smallmind_torch.config import MAX_CANDIDATES, MAX_INT8_CANDIDATES, check_tolerance, reference_for

from helpers import TINY, set_phase_or_skip

PACKAGE = Path(smallmind_torch.__file__).resolve().parent
MAX_LINES = 420


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict:
    """module -> the package modules it imports anywhere in its source (top level or inside a
    function). `from . import x` is an edge to the submodule x, not to the package."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
                submodules = {f"{base}.{a.name}" for a in node.names} & modules.keys()
                edges |= submodules if submodules else {base}
        graph[name] = {e for e in edges if e in modules and e != name}
    return graph


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert "smallmind_torch.fused_decode" in graph["smallmind_torch.runtime"]
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_model_module_imports_only_what_the_reference_needs():
    """model.py: the modules and GPT; a phase's runtime (forms, caches, workspace, the fused
    step) is phases.resolve's business, not the model file's."""
    assert import_graph()["smallmind_torch.model"] == {
        "smallmind_torch.config", "smallmind_torch.generation", "smallmind_torch.hf",
        "smallmind_torch.labels", "smallmind_torch.phases"}


def test_nothing_in_train_or_the_model_half_imports_the_study():
    """The study measures the model and training; they never reach back up into it."""
    graph = import_graph()
    below = [m for m in graph if m.startswith(("smallmind_torch.train", "smallmind_torch.ops"))
             or m.count(".") <= 1 and not m.endswith((".study", ".cli"))]
    assert "smallmind_torch.train.loop" in below and "smallmind_torch.model" in below
    upward = {m: sorted(e for e in graph[m] if e.startswith("smallmind_torch.study"))
              for m in below}
    assert not {m: e for m, e in upward.items() if e}


def private_imports() -> list:
    """(module, name) for every `_private` name a module imports from another project module
    (a package's own private submodules, `from . import _x`, are its own)."""
    graph_modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    found = []
    for name, path in graph_modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom):
                continue
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            if not base.startswith("smallmind_torch"):
                continue
            for alias in node.names:
                private = alias.name.startswith("_") and not alias.name.startswith("__")
                own_submodule = base == package and f"{base}.{alias.name}" in graph_modules
                if private and not own_submodule:
                    found.append((name, alias.name))
    return found


def test_no_module_imports_a_private_name_from_another():
    assert ("smallmind_torch.study.run", "PARTS") not in private_imports()
    assert not private_imports()


def test_no_module_is_much_longer_than_400_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, long


class _NoSwitchReads:
    """Stands in for the phase's OptConfig: any read of a switch fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"the hot path read opt.{name}")


# every form given by name (a switch's string value): what a hot path must not compare
FORM_NAMES = {form for forms in FORMS.values() for form in forms if isinstance(form, str)}


def _bound_values(fn, seen=None):
    """The values bound into `fn`: a partial's arguments and a closure's cells, followed into
    the project's own functions."""
    seen = set() if seen is None else seen
    if id(fn) in seen:
        return
    seen.add(id(fn))
    if isinstance(fn, functools.partial):
        for value in (*fn.args, *fn.keywords.values()):
            yield value
            yield from _bound_values(value, seen)
        yield from _bound_values(fn.func, seen)
    elif callable(fn) and getattr(fn, "__module__", "").startswith("smallmind_torch"):
        for cell in getattr(fn, "__closure__", None) or ():
            value = cell.cell_contents
            yield value
            yield from _bound_values(value, seen)


LOSSY_PRESETS = [*MAX_INT8_CANDIDATES.values(), MAX_CANDIDATES["custom ops"].replace(weights="bf16")]


@pytest.mark.parametrize("phase", ["reference", "phase0", "phase1", "phase2", "phase3",
                                   *MAX_CANDIDATES.values(), *LOSSY_PRESETS,
                                   OptConfig(kv_cache=True)],
                         ids=lambda p: p if isinstance(p, str) else f"{p.weights}")
def test_the_hot_path_reads_no_switch(phase, monkeypatch):
    """Once a phase is set, a forward, a prefill and a decode step read no switch, compare no
    form name bound into a callable, and look no weight up (the copies in another format were
    made when the phase was set)."""
    model = GPT(TINY).eval()
    idx = torch.randint(0, TINY.vocab_size, (2, 6))
    set_phase_or_skip(model, phase)
    rt = model.phase
    with torch.no_grad(), model.using(reference_for(rt.opt)):
        expected = model(idx)
    for field in dataclasses.fields(rt.forms):
        bound = list(_bound_values(getattr(rt.forms, field.name)))
        assert not any(isinstance(v, OptConfig) or (isinstance(v, str) and v in FORM_NAMES)
                       for v in bound), f"Forms.{field.name} binds a switch: {bound}"
    use_cache = rt.opt.kv_cache
    if use_cache:
        model.prefill(idx[:, :5])
    tolerance = dict(atol=check_tolerance(rt.opt, 1e-5), rtol=1e-4)
    rt.opt = _NoSwitchReads()

    def no_lookup(*args):
        raise AssertionError("the hot path made a weight's copy in another format")

    monkeypatch.setattr(runtime, "prepare", no_lookup)
    with torch.no_grad():
        torch.testing.assert_close(model(idx), expected, **tolerance)
        torch.testing.assert_close(model.forward_last(idx), expected[:, -1], **tolerance)
        if use_cache:
            torch.testing.assert_close(model.decode_step(idx[:, 5:6]), expected[:, -1], **tolerance)
