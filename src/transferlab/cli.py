"""The ``transferlab`` command line: thin subcommands over library functions.

Each module in :mod:`transferlab.commands` defines ``register(subparsers)`` that adds one or more
subcommands and sets ``func`` to a handler taking the parsed ``args``. Handlers import torch and
friends lazily so ``transferlab --help`` stays fast. A :class:`TransferlabError` (a user mistake)
is printed as one line and exits with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from . import __version__
from .errors import TransferlabError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="transferlab",
        description=(
            "Pre-train, then fine-tune: tokenizers, tokenize-once data, three transformer "
            "families from one block, every pre-training objective, fine-tuning against "
            "honest baselines, and the cost of every run."
        ),
    )
    parser.add_argument("--version", action="version", version=f"transferlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    from . import commands

    for mod in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if mod.name.startswith("_"):
            continue
        importlib.import_module(f"{commands.__name__}.{mod.name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        rc = args.func(args)
    except TransferlabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
