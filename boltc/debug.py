"""BOLTC_DEBUG: how much boltc prints about its own work, to stderr.

    0 (unset)  nothing
    1          stage timings (parse, each pass, lowering, codegen)
    2          + the graph after each pass
    3          + the plan (JSON)
    4          + LLVM IR of the kernels (lowering)
    5          + optimized IR and assembly (codegen)

Use: `with debug.stage("parse"): ...`, `debug.dump(level, title, text_or_function)`,
`if debug.level() >= 4: ...`.

Where the wall clock goes: a stage may name a `part` of a run (PARTS: read, featurise, compile, init,
train, evaluate, save). Each part accumulates its own time *excluding* the parts nested in it (the
validation inside training counts as evaluate, a checkpoint as save), so the parts add up to the run;
`summary()` (printed by the CLI at level >= 1) lists them and what is left (imports, the rest).
"""
from __future__ import annotations

import contextlib
import os
import sys
import time


def level() -> int:
    try:
        return int(os.environ.get("BOLTC_DEBUG", "0") or 0)
    except ValueError:
        return 1          # BOLTC_DEBUG=yes and the like: the gentlest level


PARTS = ("read", "featurise", "compile", "init", "train", "evaluate", "save")
_totals: dict[str, float] = {}
_open: list[list] = []          # per open stage: [part or None, seconds of parts nested in it]
_started = time.perf_counter()


@contextlib.contextmanager
def stage(name: str, part: str | None = None, quiet: bool = False):
    """Time one stage (printed at level >= 1 unless quiet); with `part`, count it in that part."""
    start = time.perf_counter()
    _open.append([part, 0.0])
    try:
        yield
    finally:
        elapsed = time.perf_counter() - start
        own_part, nested = _open.pop()
        if own_part is not None:
            _totals[own_part] = _totals.get(own_part, 0.0) + elapsed - nested
        if _open:
            _open[-1][1] += elapsed if own_part is not None else nested
        if not quiet and level() >= 1:
            print(f"[boltc] {name}: {elapsed * 1e3:.1f} ms", file=sys.stderr)


def reset() -> None:
    """Start a new account (the CLI calls it when a command starts)."""
    global _started
    _totals.clear()
    _started = time.perf_counter()


def summary() -> str:
    """One line: the wall clock since reset() and the share of each part."""
    wall = time.perf_counter() - _started
    parts = [(p, _totals[p]) for p in PARTS if _totals.get(p)]
    rest = wall - sum(s for _, s in parts)
    cells = [f"{p} {s:.2f}s" for p, s in parts] + [f"other {rest:.2f}s"]
    return f"[boltc] wall clock {wall:.2f}s: " + ", ".join(cells)


def dump(at_level: int, title: str, text) -> None:
    """Print `text` under a title when BOLTC_DEBUG >= at_level. `text` may be a function returning the
    text, so that costly dumps (IR, assembly, graphs) are only built when they will be printed."""
    if level() >= at_level:
        print(f"[boltc] ---- {title} ----\n{text() if callable(text) else text}", file=sys.stderr)
