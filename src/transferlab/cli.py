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
from typing import Any

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



# ---------------------------------------------------------------------------- one CLI grammar
# Every command with a typed config takes the same grammar as ``pretrain``: its fields as flags
# (generated here, help from the field docstrings, defaults shown), ``--config FILE.yaml`` and
# ``key=value`` overrides after the flags. Precedence: defaults < --config < flags < key=value.
GRAMMAR_EPILOG = ("settings: --config FILE.yaml|json (a mapping of the settings above), then the flags, then "
                  "key=value overrides after the flags (dotted for sections); later ones win.")


def field_docs(cls: type) -> dict[str, str]:
    """Field name -> its docstring (the string literal under the field), for ``--help``.

    Args:
        cls: a dataclass whose fields are documented PEP 257 style (a string after each field).

    Returns:
        One entry per field ("" when a field has no docstring).
    """
    import ast
    import dataclasses
    import inspect
    import textwrap

    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):  # a subclass may document fields it adds
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):  # pragma: no cover - source not available (frozen app)
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for a, b in zip(body, body[1:]):
            if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant):
                docs[a.target.id] = " ".join(str(b.value.value).split())  # type: ignore[attr-defined]
    return {f.name: docs.get(f.name, "") for f in dataclasses.fields(cls)}


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, *, only: tuple[str, ...] | None = None,
                         config: bool = True, overrides: bool = True, metavars: dict[str, str] | None = None,
                         options: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Add one flag per field of the dataclass ``cls``, ``--config FILE`` and ``key=value`` overrides.

    A field ``max_new_tokens: int = 50`` becomes ``--max-new-tokens N`` (help: its docstring and
    ``(default: 50)``). Field ``metadata`` (or ``options[field]``, which wins) may set ``flag``
    (another spelling, or a tuple of spellings: the first is the main one), ``metavar``,
    ``choices``, ``type`` (a parser for the value), ``help`` (instead of the docstring), ``group``
    (the title of the argument group the flag is listed under), ``exclusive`` (flags with the same
    key exclude each other), ``nargs`` + ``const`` (``--x`` alone means ``const``), ``comma``
    (a ``list[str]`` field taken as one comma-separated value) and ``cli: False`` (no flag).
    Enum fields take their values as choices, ``bool`` fields are switches (``--x``; ``--no-x``
    too unless the default is false; with ``const`` a flag that stores that value, e.g.
    ``--no-test`` for ``eval_on_test``), ``list[...]`` fields repeat (``--stop A --stop B``).
    Every flag defaults to None, so :func:`config_from_args` can tell a flag given from one left out.

    Args:
        parser: the subcommand's parser.
        cls: a dataclass with documented fields.
        only: flags for these fields only, in this order (``pretrain``: the common TrainConfig
            fields; the rest are ``train.KEY=VALUE``).
        config: also take ``--config FILE``.
        overrides: also take positional ``key=value`` overrides.
        metavars: field -> metavar, for classes whose fields carry no ``metadata``.
        options: field -> the ``metadata`` keys above, for classes that keep the command line
            out of their own definition.

    Returns:
        Field -> the default its help shows, for every field given a flag (None when it shows none).
    """
    import dataclasses
    import types
    import typing
    from enum import Enum

    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    if config:
        parser.add_argument("--config", metavar="FILE", dest="config_file",
                            help="YAML/JSON mapping of the settings below (flags and key=value win)")
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    groups: dict[str, Any] = {}
    exclusive: dict[str, Any] = {}
    shown_defaults: dict[str, Any] = {}
    for f in [by_name[n] for n in only] if only is not None else list(by_name.values()):
        meta = {"metavar": (metavars or {}).get(f.name), **dict(f.metadata), **(options or {}).get(f.name, {})}
        if meta.get("cli") is False:
            continue
        tp = hints[f.name]
        if typing.get_origin(tp) in (typing.Union, types.UnionType):  # X | None: the flag takes an X
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        shown = default.value if isinstance(default, Enum) else default
        if meta.get("comma") and isinstance(shown, list):
            shown = ",".join(map(str, shown))
        text = (meta.get("help") or docs.get(f.name, "")).replace("``", "")  # rst literals read as plain text
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            text += " (required)"
        elif not (shown is None or shown is False or shown == [] or shown == "" or "const" in meta and tp is bool):
            text += f" (default: {shown})"
        else:  # a switch off, nothing, or a flag that stores one value: no default to show
            shown = None
        flags = meta.get("flag") or "--" + f.name.replace("_", "-")
        flags = (flags,) if isinstance(flags, str) else tuple(flags)
        kw: dict[str, Any] = {"dest": f.name, "default": None, "help": text.replace("%", "%%")}
        if tp is bool and "const" in meta:
            kw.update(action="store_const", const=meta["const"])
        elif tp is bool:
            # a switch that is on (or undecided: None) by default can also be turned off: --no-x
            kw["action"] = "store_true" if default is False else argparse.BooleanOptionalAction
        elif typing.get_origin(tp) is list and not meta.get("comma"):
            kw.update(action="append", type=typing.get_args(tp)[0], metavar=meta.get("metavar"))
        else:
            if isinstance(tp, type) and issubclass(tp, Enum):
                kw["choices"] = tuple(m.value for m in tp)
            elif "choices" in meta:
                kw["choices"] = tuple(meta["choices"])
            kw.update(type=meta.get("type") or (tp if tp in (int, float) else str), metavar=meta.get("metavar"))
            if "nargs" in meta:
                kw.update(nargs=meta["nargs"], const=meta.get("const"))
        target: Any = parser
        if meta.get("group"):
            if meta["group"] not in groups:
                groups[meta["group"]] = parser.add_argument_group(meta["group"])
            target = groups[meta["group"]]
        if meta.get("exclusive"):
            if meta["exclusive"] not in exclusive:
                exclusive[meta["exclusive"]] = target.add_mutually_exclusive_group()
            target = exclusive[meta["exclusive"]]
        target.add_argument(*flags, **kw)
        shown_defaults[f.name] = shown
    if overrides:
        example = _override_example(cls)
        parser.add_argument("overrides", nargs="*", metavar="key=value",
                            help="overrides of the settings above after the flags"
                                 + (f", e.g. {example}" if example else ""))
    return shown_defaults


def _override_example(cls: type) -> str:
    """``field=value`` for the first int or float field of ``cls`` (its default), for --help."""
    import dataclasses

    for f in dataclasses.fields(cls):
        v = f.default
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return f"{f.name}={v}"
    return ""


def config_from_args(args: argparse.Namespace, cls: type, section: str) -> Any:
    """The typed config of a command: defaults < ``--config`` file < flags given < ``key=value``.

    Args:
        args: the parsed arguments (see :func:`add_config_arguments`).
        cls: the config dataclass.
        section: its name in messages and the optional prefix of overrides (``generate.top_p=0.9``).

    Returns:
        An instance of ``cls``, checked field by field (types, :data:`~transferlab.config.FLAG_RANGES`)
        and by its own ``validate()`` if it has one.

    Raises:
        ConfigError: an unreadable file, an unknown field, a value of the wrong type, a required
            field missing.
    """
    import dataclasses

    from .config import FLAG_RANGES, apply_overrides, check_fields, from_dict, in_file, load_config_file
    from .errors import ConfigError

    path = getattr(args, "config_file", None)
    data = load_config_file(path) if path else {}
    for f in dataclasses.fields(cls):
        v = getattr(args, f.name, None)
        if v is not None:
            data[f.name] = v.value if hasattr(v, "value") else v
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in data
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        flags = ", ".join("--" + m.replace("_", "-") for m in missing)
        raise ConfigError(f"{section}: missing {flags} (give each as a flag, a --config key or KEY=VALUE)")
    with in_file(path or ""):
        obj = from_dict(cls, data, where=section)
    items = list(getattr(args, "overrides", None) or [])
    if items:
        apply_overrides(obj, items, prefix=section)
    check_fields(obj, section, FLAG_RANGES)
    if hasattr(obj, "validate"):
        obj.validate()
    return obj


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
