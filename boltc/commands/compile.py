"""`boltc compile`: not implemented yet."""
HELP = "compile (not implemented yet)"


def add_arguments(p):
    p.add_argument("args", nargs="*")


def run(args) -> int:
    from boltc.errors import BoltError
    raise BoltError("'boltc compile' is not implemented yet")
