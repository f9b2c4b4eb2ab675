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
`summary()` (printed by the CLI at level >= 1) lists them, the start-up before the command (the
interpreter and the imports, from the process's start time in /proc where there is one) and what is
left.
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
_cpu_totals: dict[str, float] = {}      # the same parts in process CPU time (every thread's)
_open: list[list] = []          # per open stage: [part or None, seconds and CPU seconds of parts nested in it]
_started = time.perf_counter()


@contextlib.contextmanager
def stage(name: str, part: str | None = None, quiet: bool = False):
    """Time one stage (printed at level >= 1 unless quiet); with `part`, count it in that part."""
    start, cpu_start = time.perf_counter(), time.process_time()
    _open.append([part, 0.0, 0.0])
    try:
        yield
    finally:
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        own_part, nested, cpu_nested = _open.pop()
        if own_part is not None:
            _totals[own_part] = _totals.get(own_part, 0.0) + elapsed - nested
            _cpu_totals[own_part] = _cpu_totals.get(own_part, 0.0) + cpu - cpu_nested
        if _open:
            _open[-1][1] += elapsed if own_part is not None else nested
            _open[-1][2] += cpu if own_part is not None else cpu_nested
        if not quiet and level() >= 1:
            print(f"[boltc] {name}: {elapsed * 1e3:.1f} ms", file=sys.stderr)


_startup: float | None = None     # seconds from the process's start to reset(), where known
_startup_cpu = 0.0                # process CPU seconds at reset()
_cpu_started = 0.0


def process_age() -> float | None:
    """Seconds since this process started (Linux /proc, 10 ms steps), or None elsewhere."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def reset() -> None:
    """Start a new account (the CLI calls it when a command starts, after its imports)."""
    global _started, _startup, _startup_cpu, _cpu_started
    _totals.clear()
    _cpu_totals.clear()
    _started = time.perf_counter()
    _startup = process_age()
    _cpu_started = _startup_cpu = time.process_time()


def summary() -> str:
    """One line: the process's wall clock (its start-up included where known) and each part's share."""
    wall = time.perf_counter() - _started
    parts = [(p, _totals[p]) for p in PARTS if _totals.get(p)]
    rest = wall - sum(s for _, s in parts)
    cells = [f"{p} {s:.2f}s" for p, s in parts] + [f"other {rest:.2f}s"]
    if _startup is not None:
        wall += _startup
        cells.insert(0, f"start-up {_startup:.2f}s")
    cpu = time.process_time() - _cpu_started
    cpu_parts = [(p, _cpu_totals.get(p, 0.0)) for p, _ in parts]
    cpu_cells = ([f"start-up {_startup_cpu:.2f}s"] + [f"{p} {s:.2f}s" for p, s in cpu_parts] +
                 [f"other {cpu - sum(s for _, s in cpu_parts):.2f}s"])
    return (f"[boltc] wall clock {wall:.2f}s: " + ", ".join(cells) + "\n"
            f"[boltc] cpu time {cpu + _startup_cpu:.2f}s: " + ", ".join(cpu_cells))


def dump(at_level: int, title: str, text) -> None:
    """Print `text` under a title when BOLTC_DEBUG >= at_level. `text` may be a function returning the
    text, so that costly dumps (IR, assembly, graphs) are only built when they will be printed."""
    if level() >= at_level:
        print(f"[boltc] ---- {title} ----\n{text() if callable(text) else text}", file=sys.stderr)
