"""`boltc inspect`: not implemented yet."""
HELP = "inspect (not implemented yet)"


def add_arguments(p):
    p.add_argument("args", nargs="*")


def run(args) -> int:
    from boltc.errors import BoltError
    raise BoltError("'boltc inspect' is not implemented yet")
