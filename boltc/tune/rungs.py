"""Row rungs of `boltc tune` on large training sets (multi-fidelity on rows; the decisions are in
search.py's module doc): how many rows each rung trains on, which trials move up, and when a move up
is worth its time."""
from __future__ import annotations

ROW_FACTOR = 4             # each row rung has 4x the rows of the one below; the best quarter moves up
MIN_RUNG_ROWS = 50_000     # a smaller sample of a large set ranks settings poorly
MAX_ROW_RUNGS = 2          # rungs below all rows (1/16 and 1/4 of them): the final training is the last
PROMOTE_MIN = 2            # trials promoted to the next rung at least (the best alone cannot be compared)
MIN_RUNG_VALIDATION = 10_000


def row_rungs(n_train: int) -> list[int]:
    """Training rows per search rung, smallest first, each < n_train; [] when every trial uses all rows."""
    out, n = [], n_train // ROW_FACTOR
    while n >= MIN_RUNG_ROWS and len(out) < MAX_ROW_RUNGS:
        out.append(n)
        n //= ROW_FACTOR
    return sorted(out)


def rung_validation_rows(n_val: int, rung_rows: int) -> int:
    return min(n_val, max(MIN_RUNG_VALIDATION, rung_rows // 5))


def promoted(finished: list) -> list:
    """The trials of one rung that train again on the next: the best 1/ROW_FACTOR (>= PROMOTE_MIN), best
    first; ties go to the earlier trial."""
    ranked = sorted(finished, key=lambda t: (-t.value, t.number))
    k = max(PROMOTE_MIN, -(-len(ranked) // ROW_FACTOR))
    return ranked[:k]


def top_rows(rungs: list[int], studies: list) -> int:
    """Training rows of the largest rung with a finished trial (the one the winner comes from)."""
    for r in range(len(studies) - 1, -1, -1):
        if any(t.state.name == "COMPLETE" for t in studies[r].get_trials(deepcopy=False)):
            return rungs[r]
    return rungs[0]


def worth_promoting(finished: list, left_s: float) -> bool:
    """Whether a trial promoted from a rung is expected to finish in the `left_s` seconds left: the median
    time of the rung's finished trials times ROW_FACTOR (4x the rows, and so about 4x the time per epoch)."""
    secs = sorted(float(t.user_attrs.get("seconds", 0.0)) for t in finished)
    return bool(secs) and secs[len(secs) // 2] * ROW_FACTOR <= left_s
