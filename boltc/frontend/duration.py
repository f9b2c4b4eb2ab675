"""Wall-clock budgets written as `90s`, `10m`, `1.5h` or a number of seconds."""
from __future__ import annotations

import re

_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(s|m|min|h)?\s*$")


def parse_duration(text) -> float:
    """Seconds; ValueError with the accepted forms for anything else."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        secs = float(text)
    else:
        m = _DURATION.match(str(text))
        if not m:
            raise ValueError(f"expected a duration like 90s, 10m or 1h, found {text!r}")
        secs = float(m.group(1)) * _UNITS[m.group(2) or ""]
    if secs <= 0:
        raise ValueError(f"expected a duration > 0, found {text!r}")
    return secs


def format_duration(secs: float) -> str:
    return f"{secs / 60:g}m" if secs >= 60 and secs % 60 == 0 else f"{secs:g}s"
