"""pplx-embed: embed, serve, index, evaluate and train pplx-embed models from the command line.

One module per command group (``embed``, ``serve``, ``index``, ``eval``, ``train``), shared helpers
in ``common``. ``main`` turns a user error (:class:`~pplx_embed.errors.InputError`, a usage error, an OS error on a
file or folder: missing, not writable, not a folder ...) into one line on stderr and exit status 2;
anything else is a bug: one line and exit status 1 (``--debug`` prints the traceback).
"""

from __future__ import annotations

import argparse
import sys
import traceback

from pplx_embed.cli import embed, eval, index, serve, train
from pplx_embed.errors import InputError

COMMAND_GROUPS = (embed, serve, index, eval, train)


def _add_debug(parser: argparse.ArgumentParser, default: object = argparse.SUPPRESS) -> None:
    """``--debug`` on ``parser`` and every sub-command below it (given anywhere on the command line)."""
    parser.add_argument("--debug", action="store_true", default=default, help="print the traceback of an error")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in set(action.choices.values()):
                _add_debug(child)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pplx-embed", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.register(sub)
    _add_debug(parser, default=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("pplx-embed: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            traceback.print_exc()
        message = " ".join(str(exc).split())
        if isinstance(exc, OSError) and exc.filename is not None:  # a place the user named cannot be used
            message = f"{exc.strerror or type(exc).__name__}: {exc.filename}"
        if isinstance(exc, InputError) or (isinstance(exc, OSError) and exc.filename is not None):
            print(f"pplx-embed: error: {message}", file=sys.stderr)
            return 2
        print(f"pplx-embed: internal error: {type(exc).__name__}: {message}; rerun with --debug for the traceback",
              file=sys.stderr)
        return 1
