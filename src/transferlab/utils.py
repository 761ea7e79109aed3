"""Small shared helpers: atomic writes, seeding, hashing."""

from __future__ import annotations

import contextlib
import errno
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder + ``os.replace``.

    A reader (or a later run) never sees a half-written file: either the old one or the new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from .outputs import fix_mode

    # the pid in the name lets a later run remove it if this process dies (outputs.clean_stale_siblings)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        fix_mode(tmp, is_dir=False)  # mkstemp makes 0600: give it the mode open() would (umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temp folder beside ``final``; on success it is renamed to ``final``.

    An existing ``final`` is replaced only after the new folder is complete, so an interrupted
    write leaves either the old folder or nothing that looks complete (temp names start with '.'
    and carry the writer's pid: :class:`transferlab.outputs.Output`, which holds the output's
    lock, removes those of dead writers). Whether ``final`` may be replaced at all is that
    class's policy too.
    """
    from .outputs import fix_mode

    final = Path(final)
    if final.exists() and not final.is_dir():  # never replace a user's file by a folder
        raise NotADirectoryError(errno.ENOTDIR, "exists and is not a folder", str(final))
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.{os.getpid()}.", suffix=".tmp", dir=final.parent))
    try:
        fix_mode(tmp, is_dir=True)  # mkdtemp makes 0700: give it the mode mkdir would (umask)
        yield tmp
        _fsync_dir(tmp)
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % (2**32))
    except ImportError:  # pragma: no cover
        pass
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover
        pass
