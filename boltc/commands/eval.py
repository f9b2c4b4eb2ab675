"""`boltc eval`: not implemented yet."""
HELP = "eval (not implemented yet)"


def add_arguments(p):
    p.add_argument("args", nargs="*")


def run(args) -> int:
    from boltc.errors import BoltError
    raise BoltError("'boltc eval' is not implemented yet")
