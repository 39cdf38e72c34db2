"""The `smallmind` command line: one module per command, shared pieces in core.py."""
from __future__ import annotations

import argparse

from . import bench, build_ops, diff, generate, peers, profile, study, train, tune  # noqa: F401  (each registers its command)
from .core import COMMANDS, run_command


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="smallmind", description="smallmind-torch: a small GPT made fast phase by phase "
                                      "(the study: docs/study.md)")
    parser.add_argument("--version", action="version", version=f"smallmind-torch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for cmd in COMMANDS.values():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        cmd.add_arguments(p)
        p.set_defaults(_command=cmd)
    return parser


def main(argv: "list[str] | None" = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: usage errors (2) and --help (0)
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    return run_command(args._command.run, args)
