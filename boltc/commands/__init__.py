"""One module per `boltc` subcommand (see boltc/cli.py)."""
