"""The ``transferlab`` command line: thin subcommands over library functions.

Each module in :mod:`transferlab.commands` defines ``register(subparsers)`` that adds one or more
subcommands and sets ``func`` to a handler taking the parsed ``args``. Handlers import torch and
friends lazily so ``transferlab --help`` stays fast.

Errors end at this boundary as one line on stderr, never a traceback:

* a :class:`TransferlabError` (a user mistake): ``error: <message>``, exit status 2;
* an OS-level failure (disk full, read-only or missing folder, an output path that is a file,
  permission denied; also the same failures surfacing from safetensors' Rust writer):
  ``error: <path>: <reason>``, exit status 2. Writes are atomic (``utils.atomic_write_*``,
  ``utils.atomic_dir``), so what existed before the failed write is still there;
* a closed stdout (``transferlab ... | head -1``): nothing more is printed and the exit status
  is 141 (128 + SIGPIPE), as for ``yes | head -1``; stdout is pointed at /dev/null so the
  interpreter's own flush at exit does not print a second error;
* Ctrl-C: ``interrupted``, exit status 130.

Anything else is a bug in transferlab and keeps its traceback.
"""

from __future__ import annotations

import argparse
import errno as _errno
import importlib
import os
import pkgutil
import re
import sys
from pathlib import Path
from types import TracebackType

from ._version import __version__
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
    _check_numeric_flags(parser)
    return parser


def _check_numeric_flags(parser: argparse.ArgumentParser, command: str = "") -> None:
    """Give every int/float flag of every subcommand a range (:class:`~transferlab.config.Range`).

    ``pretrain`` and ``finetune`` flags get their typed config's ranges (TrainConfig.RANGES,
    FinetuneConfig.RANGES), other commands :data:`~transferlab.config.FLAG_RANGES`; a float flag
    that has no range must still be finite. Each parser records its flags' ranges in its defaults
    (``_ranges``), and :func:`main` checks the parsed values before running anything, so a bad
    value is one line: ``error: argument --lr: expected a finite number > 0, got nan``.
    """
    from .config import FLAG_RANGES, Range

    ranges: list[tuple[str, str, Range]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                _check_numeric_flags(sub, command or name)
        elif action.option_strings and isinstance(action.type, Range):  # an alias: already done
            ranges.append((action.option_strings[-1], action.dest, action.type))
        elif action.option_strings and action.type in (int, float):
            table: dict = FLAG_RANGES
            if command == "pretrain":
                from .training.config import TrainConfig

                table = {**FLAG_RANGES, **TrainConfig.RANGES}
            elif command == "finetune":
                from .finetune.config import FinetuneConfig

                table = {**FLAG_RANGES, **FinetuneConfig.RANGES}
            rng = table.get(action.dest)
            action.type = rng if rng is not None and rng.kind is action.type else Range(action.type)
            ranges.append((action.option_strings[-1], action.dest, action.type))
    if ranges and command:
        parser.set_defaults(_ranges=ranges)


def _range_error(args: argparse.Namespace) -> str | None:
    """``argument --flag: expected ..., got ...`` for the first parsed numeric flag out of its range."""
    for opt, dest, rng in getattr(args, "_ranges", ()):
        v = getattr(args, dest, None)
        if v is not None and rng.problem(v):
            return f"argument {opt}: expected {rng.describe()}, got {v!r}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    bad = _range_error(args)
    if bad:
        print(f"error: {bad}", file=sys.stderr)
        return 2
    try:
        rc = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
    except TransferlabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except OSError as e:
        if e.errno == _errno.EPIPE:
            _silence_stdout()
            return EXIT_BROKEN_PIPE
        print(f"error: {os_error_message(e)}", file=sys.stderr)
        return 2
    except Exception as e:  # safetensors' Rust writer wraps OS failures in its own exception type
        code = _safetensors_os_errno(e)
        if code is None:
            raise
        print(f"error: {os_error_message(OSError(code, os.strerror(code)), e.__traceback__)}", file=sys.stderr)
        return 2
    return int(rc or 0)


#: exit status after a closed stdout: what a shell reports for a process killed by SIGPIPE
EXIT_BROKEN_PIPE = 128 + 13

# hidden temp names of utils.atomic_write_bytes / atomic_dir / save_pretrained: ".NAME.XXXXXXXX.tmp",
# ".NAME.tmp", ".NAME.old-PID"; the user asked for NAME, so errors name NAME
_TEMP_NAME = re.compile(r"^\.(?P<name>.+?)(?:\.[A-Za-z0-9_]{8})?\.(?:tmp|old-\d+)$")
# locals that name the file being written, innermost frame first (fallback when the OSError has no path)
_PATH_LOCALS = ("path", "final", "file", "dst", "out_dir", "out", "directory", "save_directory")


def os_error_message(e: OSError, tb: TracebackType | None = None) -> str:
    """``<path>: <reason>`` for an OS-level failure, naming the path the user gave.

    The path is the error's own (the destination of a failed rename), with the hidden temp
    names of the atomic writers mapped back to the final name; without one, the innermost
    transferlab frame's local ``path``/``file``/``out_dir``... (``numpy.save`` and a failed
    ``write()`` raise OSErrors with no file name).
    """
    reason = e.strerror or str(e) or type(e).__name__
    name = e.filename2 if e.filename2 is not None else e.filename
    if name is None:
        name = _path_from_frames(tb if tb is not None else e.__traceback__)
    if name is None:
        return reason
    path = _user_path(os.fsdecode(name))
    if e.errno in (_errno.EEXIST, _errno.ENOTDIR) and os.path.exists(path) and not os.path.isdir(path):
        reason = "exists and is not a folder"  # mkdir over a file: 'File exists' says too little
    return f"{path}: {reason}"


def _user_path(name: str) -> str:
    parts = []
    for part in Path(name).parts:
        m = _TEMP_NAME.match(part)
        parts.append(m.group("name") if m else part)
    return str(Path(*parts)) if parts else name


def _path_from_frames(tb: TracebackType | None) -> str | None:
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    here = str(Path(__file__).resolve().parent)
    for frame in reversed(frames):
        if not frame.f_code.co_filename.startswith(here):
            continue
        for n in _PATH_LOCALS:
            v = frame.f_locals.get(n)
            if isinstance(v, (str, Path)) and str(v):
                return str(v)
    return None


def _safetensors_os_errno(e: BaseException) -> int | None:
    """The errno inside a SafetensorError like 'I/O error: No space left on device (os error 28)'."""
    if type(e).__name__ != "SafetensorError":
        return None
    m = re.search(r"\(os error (\d+)\)", str(e))
    return int(m.group(1)) if m else None


def _silence_stdout() -> None:
    """Point fd 1 at /dev/null: the reader is gone, and the interpreter flushes stdout again at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout replaced by an object without a file descriptor
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
