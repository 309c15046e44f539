"""The `convc` command. Each subcommand is a module with add_parser(subparsers) and run(args)."""

from __future__ import annotations

import argparse
import importlib
import sys

# Subcommand modules, in the order `convc --help` lists them.
SUBCOMMANDS = ["demo", "bench", "compile", "tune"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="convc", description="Compile convolution and its two adjoints with TVM.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = {}
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"convc.cli.{name}")
        module.add_parser(sub)
        modules[name] = module
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(modules[args.command].run(args) or 0)
    except (ValueError, TypeError) as err:
        print(f"convc {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
