"""`boltc train`: not implemented yet."""
HELP = "train (not implemented yet)"


def add_arguments(p):
    p.add_argument("args", nargs="*")


def run(args) -> int:
    from boltc.errors import BoltError
    raise BoltError("'boltc train' is not implemented yet")
