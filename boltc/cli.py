"""`boltc` command line. Each subcommand lives in its own module under boltc/commands/ and exposes
`HELP`, `add_arguments(parser)` and `run(args) -> int`. A user mistake (any BoltError) is printed as
`file:line:col: error: ...` and exits 1; only a bug in boltc shows a traceback (or BOLTC_DEBUG>=1).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from boltc import debug
from boltc.errors import BoltError

COMMANDS = ("run", "check", "compile", "train", "tune", "eval", "predict", "inspect", "synth", "serve")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or with `only`, of that command alone: a command's module imports
    what it runs (`serve` the web stack, `tune` the search), so a run imports only its own (start-up:
    docs/results.md). The full parser answers `boltc --help` and any mistake in the command name."""
    parser = argparse.ArgumentParser(prog="boltc", description="Compile, train and serve LSH-sparse neural networks.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS if only is None else (only,):
        mod = importlib.import_module(f"boltc.commands.{name}")
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_module=mod)
    return parser


def _command_of(argv: list[str]) -> str | None:
    """The command named by argv when it is the first argument and a known one, else None."""
    return argv[0] if argv and argv[0] in COMMANDS else None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command_of(argv))
    args = parser.parse_args(argv)
    debug.reset()
    try:
        return int(args._module.run(args) or 0)
    except BoltError as e:
        print(e.render(), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception:
        if os.environ.get("BOLTC_DEBUG"):
            raise
        raise
    finally:
        if debug.level() >= 1:
            print(debug.summary(), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
