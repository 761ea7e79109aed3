"""User-facing errors.

Anything the user can fix (a bad file, a wrong flag, an inconsistent config) raises
:class:`TransferlabError` with a one-line message that names the file/line/field and what was
expected. The CLI prints ``error: <message>`` and exits with status 2 instead of a traceback.
"""

from __future__ import annotations


class TransferlabError(Exception):
    """A mistake in user input: printed as one line by the CLI, exit status 2."""


class ConfigError(TransferlabError, ValueError):
    """An inconsistent or unknown configuration value."""


class DataError(TransferlabError, ValueError):
    """Unreadable, malformed or empty input data (message names file and line)."""


class CheckpointError(TransferlabError, ValueError):
    """A checkpoint or model directory that is missing files or does not match its config."""
