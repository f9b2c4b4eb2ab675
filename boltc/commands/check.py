"""`boltc check`: not implemented yet."""
HELP = "check (not implemented yet)"


def add_arguments(p):
    p.add_argument("args", nargs="*")


def run(args) -> int:
    from boltc.errors import BoltError
    raise BoltError("'boltc check' is not implemented yet")
