"""The one rule for everything a command writes: nothing the user had is lost.

Every writing subcommand (``tokenizer train``, ``prepare``, ``pretrain``, ``finetune``,
``evaluate``/``predict --out``, ``features --output``, ``convert``, ``compare``, ``curves --out``,
``icl --output``, ``demo``) goes through :class:`Output`:

1. **Inputs are not outputs.** ``--out`` may not be an input (``--data``, the model folder, the
   source of ``convert``) nor a folder that holds one: replacing it would delete the input.
2. **Foreign folders are refused.** An output that exists must be this command's own earlier
   output (recognised by its file names and a signature file, :data:`KINDS`); anything else
   (a folder of other runs, a model folder for a tokenizer, a user's notes beside a fine-tune,
   an unrelated file for ``predict --out``) is refused with a one-line error unless ``--force``.
3. **One writer at a time.** An exclusive ``fcntl.flock`` on ``.NAME.lock`` beside the output is
   held for the whole command; a second writer gets ``error: DIR is in use by another transferlab
   process (pid N)``. The lock file is removed on release (race-free: a waiter re-checks that the
   file it locked is still the one on disk).
4. **Whole or nothing.** Folders are built in a temp folder beside the target and renamed into
   place (:func:`transferlab.utils.atomic_dir`), files through a temp file + ``os.replace``
   (:func:`transferlab.utils.atomic_write_bytes`). Temp names carry the writer's pid
   (``.NAME.<pid>.*.tmp``) so a later run removes the ones whose writer died (``kill -9``).
   A run folder written in place (``pretrain``) removes what it created when its start fails,
   so the corrected command is not refused.
5. **Modes follow the umask** (``0666 & ~umask`` / ``0777 & ~umask``), like other tools, instead
   of the owner-only modes of ``mkstemp``/``mkdtemp``.
6. **Append-only logs** (``metrics.jsonl``, ``compare``'s ``results.jsonl``) go through
   :func:`append_jsonl`, which starts a row on a fresh line even after a torn tail (a row cut by
   ``kill -9`` or a full disk), and :func:`read_jsonl`, which skips torn rows instead of failing.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import json
import os
import re
import shutil
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from .errors import ConfigError

__all__ = [
    "OutputError", "Output", "Kind", "KINDS", "check_not_input", "foreign_entries", "lock", "umask",
    "clean_stale_siblings", "fix_mode", "append_jsonl", "read_jsonl", "is_owned", "remove_own",
]


class OutputError(ConfigError):
    """An output path the command may not write (foreign contents, an input, locked): a user
    mistake like any other, printed as one ``error:`` line."""


# ----------------------------------------------------------------------------- umask / modes
_umask_lock = threading.Lock()


def umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux /proc)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    with _umask_lock:  # the portable way sets it and puts it back
        old = os.umask(0o022)
        os.umask(old)
        return old


def fix_mode(path: str | Path, is_dir: bool | None = None) -> None:
    """Give a file made by ``mkstemp`` (0600) or a folder made by ``mkdtemp`` (0700) the mode an
    ordinary ``open``/``mkdir`` would have given it under the user's umask."""
    p = Path(path)
    d = p.is_dir() if is_dir is None else is_dir
    with contextlib.suppress(OSError):
        os.chmod(p, (0o777 if d else 0o666) & ~umask())


# ----------------------------------------------------------------------------- stale temp names
_PID_TMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[^.]+\.tmp$")
_OLD = re.compile(r"^\.(?P<name>.+)\.old-(?P<pid>\d+)$")


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine (a permission error counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_siblings(target: str | Path) -> list[Path]:
    """Remove temp folders/files (``.NAME.<pid>.*.tmp``) and half-swapped old copies
    (``.NAME.old-<pid>``) of ``target`` whose writer is no longer running.

    Returns:
        The paths removed.
    """
    target = Path(target)
    parent = target.parent
    removed: list[Path] = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    for e in entries:
        m = _PID_TMP.match(e.name) or _OLD.match(e.name)
        if not m or m.group("name") != target.name or int(m.group("pid")) == os.getpid():
            continue
        if pid_alive(int(m.group("pid"))):
            continue
        p = Path(e.path)
        with contextlib.suppress(OSError):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
    return removed


# ----------------------------------------------------------------------------- locks
def lock_path(target: str | Path) -> Path:
    t = Path(target)
    return t.with_name(f".{t.name}.lock")


@contextlib.contextmanager
def lock(target: str | Path, what: str | None = None) -> Iterator[Path]:
    """Hold an exclusive lock on ``target`` (``fcntl.flock`` on ``.NAME.lock`` beside it).

    Raises:
        OutputError: another process holds it: ``DIR is in use by another transferlab process (pid N)``.
    """
    import fcntl

    target = Path(target)
    lp = lock_path(target)
    lp.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lp, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                os.close(fd)
                raise
            pid = _read_pid(fd)
            os.close(fd)
            raise OutputError(f"{what or target} is in use by another transferlab process"
                              + (f" (pid {pid})" if pid else "")) from None
        # the holder before us may have removed the file after we opened it: lock the live one
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lp))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield lp
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lp)  # while still locked: a waiter that opened it re-checks and retries
        os.close(fd)


def _read_pid(fd: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        os.lseek(fd, 0, os.SEEK_SET)
        return int(os.read(fd, 32).decode().strip() or 0) or None
    return None


# ----------------------------------------------------------------------------- ownership
def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _has_keys(file: str, *keys: str) -> Callable[[Path], bool]:
    def check(d: Path) -> bool:
        obj = _json(d / file)
        return isinstance(obj, dict) and all(k in obj for k in keys)
    return check


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                    "vocab.json", "merges.txt", "spiece.model", "added_tokens.json")
_MODEL_FILES = ("config.json", "model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors",
                "generation_config.json", *_TOKENIZER_FILES,
                # sentence-transformers layout, kept by convert
                "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json", "[0-9]_*")
_CARD = ("README.md",)  # a model card copied by convert (in a fine-tune folder a README is the user's)


@dataclass(frozen=True)
class Kind:
    """What one command's own output folder looks like."""

    what: str
    """How errors name it: 'a tokenizer folder', ..."""
    names: tuple[str, ...]
    """fnmatch patterns of the top-level entries the command writes."""
    signature: Callable[[Path], bool]
    """True for a folder the command wrote (a file with the command's own keys)."""
    in_place: bool = False
    """Written in place (a run folder that grows), not replaced whole: ``--force`` then means
    'write into it anyway' and other files are kept."""


KINDS: dict[str, Kind] = {
    "tokenizer": Kind("a tokenizer folder (`transferlab tokenizer train`)", _TOKENIZER_FILES,
                      _has_keys("tokenizer_config.json", "transferlab")),
    "prepare": Kind("a prepared dataset (`transferlab prepare`)",
                    ("meta.json", "tokenizer", "train.*", "validation.*", "test.*"),
                    _has_keys("meta.json", "format_version", "tokenizer", "splits")),
    "pretrain": Kind("a pre-training run (`transferlab pretrain`)",
                     ("config.json", "metrics.jsonl", "tensorboard", "checkpoints", "loss_curve.png", "summary.json",
                      "model", "report.json", ".model.*"),
                     _has_keys("config.json", "model", "objective", "train"), in_place=True),
    "finetune": Kind("a fine-tuned model folder (`transferlab finetune`)",
                     (*_MODEL_FILES, "task.json", "finetune_config.json", "metrics.json", "history.jsonl",
                      "metrics.jsonl", "tensorboard", "report.json", "checkpoints"),
                     # a finished fine-tune, or a killed one that left its checkpoints (--resume)
                     lambda d: (d / "task.json").is_file() or (d / "checkpoints").is_dir()),
    "convert-from-hf": Kind("a model folder written by `transferlab convert --from-hf`", _MODEL_FILES + _CARD,
                            _has_keys("config.json", "transferlab_version")),
    "convert-to-hf": Kind("a transformers folder written by `transferlab convert --to-hf`", _MODEL_FILES + _CARD,
                          lambda d: (isinstance(c := _json(d / "config.json"), dict) and "model_type" in c
                                     and "transferlab_version" not in c)),
    "compare": Kind("a comparison folder (`transferlab compare`)",
                    ("results.jsonl", "errors.log", "summary.md", "summary.csv", "plots", "cells", "*.png"),
                    lambda d: (d / "results.jsonl").is_file() or (d / "errors.log").is_file(), in_place=True),
    "ulmfit": Kind("a ULMFiT run (`transferlab ulmfit`)",
                   ("ulmfit.json", "lm-fwd", "lm-bwd", "task-corpus-*.txt", "task-data-*", "task-lm-*", "cls-*",
                    "ensemble.json", ".task-*", ".cls-*", ".lm-*", ".ulmfit.json*", ".ensemble.json*"),
                   lambda d: isinstance(u := _json(d / "ulmfit.json"), dict) and "stages" in u and "settings" in u,
                   in_place=True),
    "demo": Kind("a demo folder (`transferlab demo`)",
                 ("demo_config.json", "tokenizer", "data", "corpus*", "bert-mini-mlm", "compare", "summary.md",
                  "summary.json", "*.png", "*.txt"),
                 lambda d: (d / "demo_config.json").is_file(), in_place=True),
}


def _visible(d: Path) -> list[str]:
    """Entries of ``d`` except our own temp/lock names (``.X.<pid>.*.tmp``, ``.X.lock``, ...)."""
    out = []
    for name in sorted(os.listdir(d)):
        if _PID_TMP.match(name) or _OLD.match(name) or name.endswith(".lock") and name.startswith("."):
            continue
        out.append(name)
    return out


def foreign_entries(d: str | Path, kind: str) -> list[str]:
    """Entries of folder ``d`` that are not ``kind``'s own output (empty: ``d`` is ours or empty).

    A non-empty folder without the kind's signature file counts as entirely foreign. A folder
    written in place (``Kind.in_place``: a run that grows) with the signature is accepted as a
    whole: nothing in it is replaced, so the user's own files beside the run are not at risk.
    """
    d = Path(d)
    names = _visible(d)
    if not names:
        return []
    k = KINDS[kind]
    if not k.signature(d):
        return names
    if k.in_place:
        return []
    return [n for n in names if not any(fnmatch.fnmatchcase(n, pat) for pat in k.names)]


def is_owned(d: str | Path, kind: str) -> bool:
    """True if ``d`` is missing, empty or holds only ``kind``'s own earlier output."""
    d = Path(d)
    return not d.exists() or (d.is_dir() and not foreign_entries(d, kind))


def remove_own(d: str | Path, kind: str) -> list[str]:
    """Delete the entries of ``d`` that are ``kind``'s own output (e.g. an earlier run that
    ``--force`` starts over); anything else in ``d`` is left alone. Returns the names removed."""
    d = Path(d)
    if not d.is_dir():
        return []
    k = KINDS[kind]
    gone = []
    for name in _visible(d):
        if any(fnmatch.fnmatchcase(name, pat) for pat in k.names):
            q = d / name
            with contextlib.suppress(OSError):
                shutil.rmtree(q) if q.is_dir() and not q.is_symlink() else q.unlink()
                gone.append(name)
    return gone


# ----------------------------------------------------------------------------- own files
def is_metrics_json(p: Path) -> bool:
    """A metrics file written by ``evaluate``: one JSON object of numbers."""
    if p.stat().st_size > 1 << 20:
        return False
    obj = _json(p)
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, (int, float)) for v in obj.values())


def is_predictions_jsonl(p: Path) -> bool:
    """A predictions file written by ``predict``: JSONL objects with a ``prediction`` field
    (an empty file counts too: ``predict`` of no inputs)."""
    try:
        with open(p, "rb") as f:
            first = f.readline(1 << 20)
    except OSError:
        return False
    if not first.strip():
        return p.stat().st_size == 0
    try:
        row = json.loads(first)
    except ValueError:
        return False
    return isinstance(row, dict) and "prediction" in row


def is_json_with(*keys: str) -> Callable[[Path], bool]:
    """A JSON object holding ``keys`` (e.g. a features sidecar, an icl report)."""
    def check(p: Path) -> bool:
        if p.stat().st_size > 64 << 20:
            return False
        obj = _json(p)
        return isinstance(obj, dict) and all(k in obj for k in keys)
    return check


def is_matplotlib_png(p: Path) -> bool:
    """A PNG written by matplotlib (its ``Software`` text chunk), e.g. an earlier ``curves --out``."""
    try:
        with open(p, "rb") as f:
            head = f.read(512)
    except OSError:
        return False
    return head.startswith(b"\x89PNG") and b"matplotlib" in head.lower()


# ----------------------------------------------------------------------------- inputs
def _real(p: str | Path) -> Path:
    return Path(os.path.realpath(os.path.abspath(os.fspath(p))))


def check_not_input(target: str | Path, inputs: Iterable[str | Path | None], flag: str = "--out",
                    inside_ok: bool = True) -> None:
    """Refuse an output that is one of the inputs or a folder holding one.

    Args:
        target: the output path.
        inputs: input files/folders (``None`` and ``builtin:`` names are skipped).
        flag: how the error names the output option.
        inside_ok: False also refuses an output inside an input folder (a corpus folder: the
            output's files would be read as input by the next run).

    Raises:
        OutputError: ``--out X is also an input (--data X)``-style one-liner.
    """
    t = _real(target)
    for inp in inputs:
        if inp is None or str(inp).startswith("builtin:") or not Path(inp).exists():
            continue
        i = _real(inp)
        if i == t:
            raise OutputError(f"{flag} {target}: is also an input ({inp}); write the output somewhere else")
        if t in i.parents:
            raise OutputError(f"{flag} {target}: holds the input {inp}; writing there would replace it; "
                              "choose another output")
        if not inside_ok and i.is_dir() and i in t.parents:
            raise OutputError(f"{flag} {target}: is inside the input folder {inp}; its files would be read as "
                              "input next time; choose an output outside it")


# ----------------------------------------------------------------------------- the claim
@dataclass
class Output:
    """One command's claim on one output (a folder or a file), held for the whole command.

    Use as a context manager around everything that writes ``path``::

        with Output(args.out, "prepare", force=args.force, inputs=[args.tokenizer, *args.input]):
            prepare_corpus(...)          # writes through utils.atomic_dir

    On entry: the output is checked against the inputs, locked, stale temp siblings of dead
    writers are removed, and existing contents are checked against :data:`KINDS` (refused unless
    ``force``). On a failed exit with ``cleanup=True`` (run folders written in place) every entry
    the command created is removed again, so a failed start leaves nothing behind.

    Args:
        path: the output folder or file.
        kind: a key of :data:`KINDS` for folders; for files use ``file=True`` and ``owned``.
        force: replace a foreign output.
        inputs: paths the command reads (the output may not be or hold one).
        file: the output is a single file (``owned`` decides whether an existing one is ours).
        owned: for files: ``owned(path) -> bool``, True for this command's own earlier output.
        flag: the option name used in messages (``--out``, ``--output``).
        cleanup: remove what this command created in ``path`` when it fails (in-place run folders).
        keep_if: with ``cleanup``: a callable ``() -> bool``; True keeps everything (something
            resumable exists, e.g. a checkpoint).
        locked: take the lock (False on non-main torchrun ranks: rank 0 holds it for the job).
        extra: further files the command writes beside ``path`` (sidecars); checked like ``path``.
        inside_ok: False refuses an output inside an input folder (corpus folders).
    """

    path: str | Path
    kind: str | None = None
    force: bool = False
    inputs: Sequence[str | Path | None] = ()
    file: bool = False
    owned: Callable[[Path], bool] | None = None
    flag: str = "--out"
    cleanup: bool = False
    keep_if: Callable[[], bool] | None = None
    locked: bool = True
    extra: Sequence[str | Path] = ()
    inside_ok: bool = True
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack, repr=False)
    _before: set[str] | None = field(default=None, repr=False)
    _existed: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        self.path = Path(self.path)

    # .................................................................. checks
    def check(self) -> None:
        """Everything but the lock: inputs, type of the path, foreign contents."""
        p = Path(self.path)
        for q in (p, *map(Path, self.extra)):
            check_not_input(q, self.inputs, self.flag, self.inside_ok)
        if self.file:
            for q in (p, *map(Path, self.extra)):
                if q.is_dir():
                    raise OutputError(f"{self.flag} {p}: {q} is a folder; expected a file name")
            if self.force:
                return
            theirs = [q for q in (p, *map(Path, self.extra)) if q.exists() and not self._owned_file(q)]
            if theirs:
                names = ", ".join(str(q) for q in theirs[:3])
                raise OutputError(f"{self.flag} {p}: {names} already exists and was not written by this command; "
                                  "pass --force to overwrite it, or choose another name")
            return
        if p.exists() and not p.is_dir():
            raise OutputError(f"{self.flag} {p}: exists and is not a folder")
        if p.is_dir() and not self.force and self.kind is not None:
            bad = foreign_entries(p, self.kind)
            if bad:
                shown = ", ".join(bad[:4]) + (f" (+{len(bad) - 4} more)" if len(bad) > 4 else "")
                how = "write into it anyway" if KINDS[self.kind].in_place else "replace it"
                raise OutputError(f"{self.flag} {p}: is not {KINDS[self.kind].what} (it holds {shown}); "
                                  f"pass --force to {how}, or choose a new or empty folder")

    def _owned_file(self, q: Path) -> bool:
        return self.owned is not None and bool(self.owned(q))

    # .................................................................. context
    def __enter__(self) -> "Output":
        p = Path(self.path)
        check_not_input(p, self.inputs, self.flag, self.inside_ok)  # before touching anything
        if self.locked:
            self._stack.enter_context(lock(p, str(p)))
        try:
            clean_stale_siblings(p)
            for q in self.extra:
                clean_stale_siblings(q)
            self.check()
            self._existed = p.exists()
            self._before = set(os.listdir(p)) if p.is_dir() else set()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is not None and self.cleanup and not (self.keep_if is not None and self.keep_if()):
                self.undo()
        finally:
            self._stack.close()

    def undo(self) -> None:
        """Remove what this command created in the output (the folder itself if it was new)."""
        p = Path(self.path)
        if not p.is_dir():
            return
        if not self._existed:
            shutil.rmtree(p, ignore_errors=True)
            return
        for name in set(os.listdir(p)) - (self._before or set()):
            q = p / name
            with contextlib.suppress(OSError):
                shutil.rmtree(q) if q.is_dir() and not q.is_symlink() else q.unlink()


# ----------------------------------------------------------------------------- append-only logs
def append_jsonl(path: str | Path, rows: dict | Iterable[dict], fsync: bool = True,
                 default: Callable[[Any], Any] | None = None) -> None:
    """Append rows to a JSONL log, each on a fresh line.

    A file whose last byte is not a newline ends in a torn row (a write cut by ``kill -9`` or a
    full disk): a newline is written first, so the new row is never glued onto the torn one
    (which :func:`read_jsonl` then skips).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [rows] if isinstance(rows, dict) else list(rows)
    data = "".join(json.dumps(r, default=default) + "\n" for r in rows).encode("utf-8")
    with open(path, "a+b") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                data = b"\n" + data
        f.write(data)
        f.flush()
        if fsync:
            os.fsync(f.fileno())


def read_jsonl(path: str | Path, warn: bool = True) -> list[dict]:
    """The rows of a JSONL log; torn rows (lines that are not a JSON object) are skipped.

    Args:
        path: the log (a missing file reads as no rows).
        warn: print one ``warning:`` line to stderr naming the skipped line numbers.
    """
    p = Path(path)
    if not p.is_file():
        return []
    rows, torn = [], []
    with open(p, "rb") as f:
        for n, raw in enumerate(f, 1):
            line = raw.strip()
            if not line:
                continue
            try:
                row = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                torn.append(n)
                continue
            if isinstance(row, dict):
                rows.append(row)
            else:
                torn.append(n)
    if torn and warn:
        print(f"warning: {p}: skipped {len(torn)} torn or unreadable line(s) ({', '.join(map(str, torn[:5]))}"
              f"{' ...' if len(torn) > 5 else ''})", file=sys.stderr)
    return rows
