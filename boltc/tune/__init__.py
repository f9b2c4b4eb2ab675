"""`boltc tune`: Optuna search over the values written `auto` (search.py has the decisions)."""
from boltc.frontend.duration import format_duration, parse_duration  # noqa: F401
from boltc.tune.search import TuneResult, tune  # noqa: F401
