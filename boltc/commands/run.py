"""`boltc run`: not implemented yet."""
HELP = "run (not implemented yet)"


def add_arguments(p):
    p.add_argument("args", nargs="*")


def run(args) -> int:
    from boltc.errors import BoltError
    raise BoltError("'boltc run' is not implemented yet")
