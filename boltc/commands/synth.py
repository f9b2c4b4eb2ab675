"""`boltc synth`: not implemented yet."""
HELP = "synth (not implemented yet)"


def add_arguments(p):
    p.add_argument("args", nargs="*")


def run(args) -> int:
    from boltc.errors import BoltError
    raise BoltError("'boltc synth' is not implemented yet")
