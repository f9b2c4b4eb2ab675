"""`boltc predict`: not implemented yet."""
HELP = "predict (not implemented yet)"


def add_arguments(p):
    p.add_argument("args", nargs="*")


def run(args) -> int:
    from boltc.errors import BoltError
    raise BoltError("'boltc predict' is not implemented yet")
