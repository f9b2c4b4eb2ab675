"""The layers hold: imports go one way, nothing imports in a cycle, the runtime runs a saved model
without the front end, the passes or the CLI, and imports inside functions are kept for optional
dependencies (each with a comment saying so).

    python -m pytest -q tests/test_layers.py

Reads the sources (ast), so it sees every import, also one inside a function.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parent.parent
# where each package lives in the source tree (pyproject's package-dir)
TREES = {"boltc": ROOT / "boltc", "boltc.runtime": ROOT / "runtime", "boltc.grammar": ROOT / "grammar"}

# layer -> module prefixes (longest prefix wins)
LAYERS = {
    "base": ("boltc.errors", "boltc.debug", "boltc.version"),
    "ops": ("boltc.ops",),
    "ir": ("boltc.ir",),
    "plan": ("boltc.plan",),
    "frontend": ("boltc.frontend", "boltc.grammar"),
    "passes": ("boltc.passes",),
    "lower": ("boltc.lower", "boltc.codegen", "boltc.kernel_cache"),
    "runtime": ("boltc.runtime",),
    "driver": ("boltc", "boltc.api", "boltc.pipeline", "boltc.cli", "boltc.commands"),
}
# layer -> the layers it may import. The front end builds the IR; the passes plan it; the plan is a
# leaf contract; the lowering reads only the plan (the IR knows nothing of LLVM, the lowering nothing
# of graphs); the runtime reads the plan and binds kernels through the lowering's kernel library.
# The op declarations (boltc/ops/) sit under all of them: every layer reads its registries.
MAY_IMPORT = {
    "base": {"base"},
    "ops": {"base", "ops"},
    "ir": {"base", "ops", "ir"},
    "plan": {"base", "ops", "plan"},
    "frontend": {"base", "ops", "ir", "plan", "frontend"},
    "passes": {"base", "ops", "ir", "plan", "passes"},
    "lower": {"base", "ops", "plan", "lower"},
    "runtime": {"base", "ops", "plan", "lower", "runtime"},
    "driver": set(LAYERS),
}
# imports that may sit inside a function: optional dependencies (extras in pyproject.toml), which a
# module must not need just to be imported
OPTIONAL = {"ray", "torch", "matplotlib", "optuna", "uvicorn", "starlette", "prometheus_client", "httpx",
            "sklearn", "psutil", "resource", "fcntl", "msvcrt"}
# and these, each with its reason next to it: the package root's compile/load import the compiler
# lazily so that a runtime-only program never loads it (boltc/__init__.py); the native backend is
# loaded where it is chosen, so a platform without a working code generator still runs the interpreter
LAZY = {("boltc", "boltc.api.compile"), ("boltc", "boltc.api.load"),
        ("boltc.runtime.exec.executor", "boltc.runtime.exec.native.NativeExecutor"),
        ("boltc.commands.compile", "boltc.runtime.savefile.artifact.write_artifact"),
        # `boltc serve` loads the server (which needs the serve extra) only when it runs
        ("boltc.commands.serve", "boltc.serve.server"), ("boltc.commands.serve", "boltc.serve.app.Settings"),
        ("boltc.commands.serve", "boltc.serve.app.build_app"), ("boltc.commands.serve", "boltc.serve.models.ModelSet"),
        ("boltc.commands.serve", "boltc.serve.models.parse_model_args"),
        # `boltc train` / `boltc run` without tune(...) do not load the search (start-up time)
        ("boltc.commands.run", "boltc.commands.tune.run_tune"),
        # a compile loads the host calibration (kernels, runtime) only when a choice needs it
        ("boltc.pipeline", "boltc.calibration.host_costs")}


def modules() -> dict[str, Path]:
    found = {}
    for pkg, tree in TREES.items():
        for path in tree.rglob("*.py"):
            rel = path.relative_to(tree).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([pkg, *parts])
            if pkg == "boltc" and parts and parts[0] in ("runtime", "grammar"):
                continue
            found[name] = path
    return found


MODULES = modules()


def layer_of(module: str) -> str:
    best, best_len = None, -1
    for layer, prefixes in LAYERS.items():
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best_len:
                best, best_len = layer, len(p)
    assert best is not None, module
    return best


def _resolve(name: str) -> str | None:
    """The boltc module an imported dotted name denotes (a module, or the module holding a name)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports(module: str):
    """(imported boltc module or external top-level name, line, in_function, comment) per import."""
    path = MODULES[module]
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    tree = ast.parse(text)
    in_fn = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            in_fn.update(id(sub) for sub in ast.walk(node) if isinstance(sub, (ast.Import, ast.ImportFrom)))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module if path.name == "__init__.py" else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                src = f"{base}.{node.module}" if node.module else base
            else:
                src = node.module
            targets = [f"{src}.{a.name}" for a in node.names]
        else:
            continue
        near = " ".join(lines[max(0, node.lineno - 2):node.end_lineno])
        for t in targets:
            yield t, node.lineno, id(node) in in_fn, "#" in near


def graph() -> nx.DiGraph:
    g = nx.DiGraph()
    for m in MODULES:
        g.add_node(m)
        for t, line, _, _ in imports(m):
            if m == "boltc" and (m, t) in LAZY:
                continue            # the root's lazy entry points (above) are not a dependency of the package
            if t.split(".")[0] == "boltc":
                dst = _resolve(t)
                # importing a.b.c runs a/__init__ and a/b/__init__ first: those are imports too
                parts = (dst or "").split(".")
                for target in [".".join(parts[:i]) for i in range(2, len(parts))] + [dst]:
                    if target and target in MODULES and target != m and not m.startswith(target + "."):
                        g.add_edge(m, target, line=line)
    return g


def test_every_module_is_in_a_layer():
    assert {m: layer_of(m) for m in MODULES}


def test_imports_go_one_way():
    bad = []
    for src, dst, data in graph().edges(data=True):
        ls, ld = layer_of(src), layer_of(dst)
        if ld not in MAY_IMPORT[ls]:
            bad.append(f"{MODULES[src].relative_to(ROOT)}:{data['line']}: {ls} module {src} imports {ld} module {dst}")
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    g = graph()
    cycles = list(nx.simple_cycles(g))
    assert not cycles, "\n".join(" -> ".join(c + [c[0]]) for c in sorted(cycles, key=len)[:10])


def test_imports_inside_functions_only_for_optional_dependencies():
    bad = []
    for m, path in MODULES.items():
        for t, line, in_fn, commented in imports(m):
            if not in_fn:
                continue
            if (m, t) in LAZY and commented:
                continue
            if t.split(".")[0] not in OPTIONAL:
                bad.append(f"{path.relative_to(ROOT)}:{line}: {t} imported inside a function")
            elif not commented:
                bad.append(f"{path.relative_to(ROOT)}:{line}: optional {t} imported without a comment saying why")
    assert not bad, f"{len(bad)} imports inside functions:\n" + "\n".join(bad)


def test_the_layer_rules_catch_a_wrong_arrow(tmp_path):
    """The checker itself: an IR module importing the passes is reported."""
    assert "passes" not in MAY_IMPORT[layer_of("boltc.ir")]
    assert "frontend" not in MAY_IMPORT[layer_of("boltc.runtime.exec.native")]
    assert "runtime" not in MAY_IMPORT[layer_of("boltc.lower.rules")]
    assert layer_of("boltc.runtime.savefile.artifact") == "runtime"


@pytest.mark.parametrize("backend", ["numpy", "native"])
def test_runtime_runs_a_saved_model_without_front_end_passes_or_cli(tmp_path, backend):
    """Save a trained model, then in a fresh process load and run it through the runtime alone."""
    import boltc
    from boltc.runtime.data.synth import SynthSpec, generate
    m = boltc.compile(ROOT / "models" / "tiny.bolt", backend=backend, epochs=1)
    path = tmp_path / "m.boltc"
    m.save(path)
    code = f"""
import sys
import numpy as np
from boltc.runtime import savefile
from boltc.runtime.exec.executor import make_executor
saved = savefile.load_model({str(path)!r})
state = savefile.state_from_saved(saved, {str(path)!r})
ex = make_executor(saved.plan, state, backend={backend!r})
print(type(ex).__name__)
banned = [m for m in sys.modules if m.split('.')[:2] in (['boltc', 'frontend'], ['boltc', 'passes'],
          ['boltc', 'cli'], ['boltc', 'commands'], ['boltc', 'api'], ['boltc', 'pipeline']) or m == 'lark']
assert not banned, banned
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr


def test_the_ir_and_the_plan_know_nothing_of_llvm():
    """Importing the IR, the op declarations and the plan contract loads no LLVM binding or builder."""
    code = ("import sys, boltc.ir, boltc.plan, boltc.ops\n"
            "bad = [m for m in sys.modules if m.startswith(('llvmlite', 'boltc.lower', 'boltc.codegen', 'lark'))]\n"
            "assert not bad, bad\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
