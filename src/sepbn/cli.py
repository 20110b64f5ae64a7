"""The ``sepbn`` command line: thin wiring around the library modules."""

from __future__ import annotations

import argparse
import sys

from sepbn import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sepbn",
        description="Separable Batch Normalization and Cross-protocol Network Training "
        "for facial landmark localization.",
    )
    parser.add_argument("--version", action="version", version=f"sepbn {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
