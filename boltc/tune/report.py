"""What `boltc tune` shows and writes: a progress bar over the budget, one line per finished trial, the
leaderboard, and the winning model as a .bolt file with every chosen value written out."""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

from boltc import ir
from boltc.frontend import format_source
from boltc.passes import run_pipeline

LEADERBOARD_ROWS = 10


def _params(p: dict) -> str:
    return "  ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in p.items())


class Progress:
    """A tqdm bar over the budget's seconds (none with progress off; the trial lines are printed anyway)."""

    def __init__(self, enabled: bool, budget: float, spent: float, metric: str, log):
        self.metric, self.log, self.budget, self.spent = metric, log, budget, spent
        self.bar = None
        self.prefix = ""                    # the row rung's "rows N: " when the search runs on row samples
        if enabled:
            self.bar = tqdm(total=round(budget), initial=min(round(spent), round(budget)), unit="s",
                            file=sys.stderr, dynamic_ncols=True, leave=False,
                            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} s {postfix}")

    def epoch(self, trial: int, epoch: int, value, elapsed: float) -> None:
        if self.bar is not None:
            self.bar.n = min(round(self.spent + elapsed), round(self.budget))
            self.bar.set_postfix_str(f"{self.prefix}trial {trial} epoch {epoch} {self.metric} "
                                     f"{'-' if value is None else f'{value:.2f}'}")

    def trial_done(self, trial, study) -> None:
        state = trial.state.name.lower()
        v = trial.value if trial.value is not None else (
            max(trial.intermediate_values.values()) if trial.intermediate_values else None)
        try:
            best = study.best_value
        except ValueError:
            best = None
        note = trial.user_attrs.get("note")
        line = (f"{self.prefix}trial {trial.number:>3}  {state:<8} {self.metric} {'-' if v is None else f'{v:6.2f}'}  "
                f"epochs {trial.user_attrs.get('best_epoch', trial.user_attrs.get('epochs_run', '-'))}  "
                f"{trial.user_attrs.get('seconds', 0):6.1f}s  best {'-' if best is None else f'{best:.2f}'}  "
                f"{_params(trial.params)}" + (f"  ({note})" if note else ""))
        self.note(line)

    def note(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            self.log(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def leaderboard(study, metric: str) -> list[dict]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        if not t.state.is_finished():
            continue
        v = t.value if t.value is not None else (
            max(t.intermediate_values.values()) if t.intermediate_values else None)
        rows.append({"trial": t.number, "state": t.state.name.lower(), "value": v,
                     "epochs": t.user_attrs.get("best_epoch", t.user_attrs.get("epochs_run")),
                     "seconds": t.user_attrs.get("seconds"), "params": dict(t.params),
                     "note": t.user_attrs.get("note")})
    # finished trials first (their value is a best epoch), then pruned ones by how far they got
    rows.sort(key=lambda r: (r["state"] != "complete", -(r["value"] if r["value"] is not None else -1e9)))
    return rows


def format_leaderboard(rows: list[dict], metric: str, on: str | None = None) -> str:
    done = sum(r["state"] == "complete" for r in rows)
    lines = [f"leaderboard{'' if on is None else ' on ' + on} ({len(rows)} trials, {done} complete; "
             f"validation {metric}, best first):",
             f"{'rank':>4} {'trial':>5} {'state':<9}{metric:>12} {'epochs':>6} {'seconds':>8}  values"]
    for i, r in enumerate(rows[:LEADERBOARD_ROWS], 1):
        v = "-" if r["value"] is None else f"{r['value']:.2f}"
        lines.append(f"{i:>4} {r['trial']:>5} {r['state']:<9}{v:>12} {str(r['epochs'] or '-'):>6} "
                     f"{(r['seconds'] or 0):>8.1f}  {_params(r['params'])}")
    return "\n".join(lines)


def header(file: str, budget: float, search_s: float, n: int, best, metric: str, final_data: str,
           validation: str, ensemble: str | None = None) -> list[str]:
    lines = [f"Tuned by `boltc tune` from {Path(file).name}: {n} trials in {search_s:.0f}s of a {budget:g}s budget,",
             f"chosen on validation {metric} ({validation}): trial {best.number}, {best.value:.2f}."]
    if ensemble is not None:
        lines.append(ensemble)
    return lines + [f"Every value is written out; the final model trains on {final_data}."]


def _source(split_value, folder: Path) -> ir.DataSource | None:
    """A data block entry for the written file: a path relative to its folder (None for in-memory data)."""
    if isinstance(split_value, (str, os.PathLike)):
        path, fmt, opts = str(split_value), None, {}
    elif isinstance(split_value, dict) and split_value.get("kind") == "file":
        path = split_value["path"]
        fmt = split_value.get("format")
        opts = {k: v for k, v in split_value.items() if k not in ("kind", "path", "format", "loc")}
    elif isinstance(split_value, dict) and split_value.get("kind") == "synthetic":
        return ir.DataSource("synthetic", None, None, {k: v for k, v in split_value.items() if k != "kind"})
    else:
        return None
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(folder))
    return ir.DataSource("file", rel, fmt, opts)


def write_bolt(path: Path, graph, header_lines: list[str], *, train, validation, test) -> None:
    """The planned graph as .bolt text (every automatic choice written out), atomically."""
    g = graph.copy()
    g.graph = dict(graph.graph)
    folder = Path(path).resolve().parent
    g.graph["file"] = str(path)             # the data paths are relative to the written file
    g.graph["data"] = {"train": _source(train, folder), "validation": _source(validation, folder),
                       "test": _source(test, folder)}
    planned = run_pipeline(g)
    text = "".join(f"# {line}\n" for line in header_lines) + format_source(planned)
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
