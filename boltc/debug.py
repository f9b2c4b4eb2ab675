"""BOLTC_DEBUG: how much boltc prints about its own work, to stderr.

    0 (unset)  nothing
    1          stage timings (parse, each pass, lowering, codegen)
    2          + the graph after each pass
    3          + the plan (JSON)
    4          + LLVM IR of the kernels (lowering)
    5          + optimized IR and assembly (codegen)

Use: `with debug.stage("parse"): ...`, `debug.dump(level, title, text_or_function)`,
`if debug.level() >= 4: ...`.
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


@contextlib.contextmanager
def stage(name: str):
    """Time one stage; printed at level >= 1."""
    if level() < 1:
        yield
        return
    start = time.perf_counter()
    try:
        yield
    finally:
        print(f"[boltc] {name}: {(time.perf_counter() - start) * 1e3:.1f} ms", file=sys.stderr)


def dump(at_level: int, title: str, text) -> None:
    """Print `text` under a title when BOLTC_DEBUG >= at_level. `text` may be a function returning the
    text, so that costly dumps (IR, assembly, graphs) are only built when they will be printed."""
    if level() >= at_level:
        print(f"[boltc] ---- {title} ----\n{text() if callable(text) else text}", file=sys.stderr)
