"""Field checking for the typed configs: numeric ranges, type conformance, JSON files with line numbers.

:class:`Range` and its named instances (``COUNT``, ``POSITIVE`` ...) bound numeric fields;
:func:`check_fields` checks a dataclass against its annotations and ranges with one-line errors
naming ``section.field``; :func:`read_json` / :func:`in_file` put the file name in front of them.
:mod:`transferlab.config` re-exports these names, which is where the configs import them from.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import re
import types
import typing
from dataclasses import dataclass, fields
from enum import Enum
from pathlib import Path
from typing import Any, Iterator

from .errors import ConfigError

# ---------------------------------------------------------------------------- ranges and shapes
@dataclass(frozen=True)
class Range:
    """The allowed values of a numeric setting, shared by a config field and its CLI flag.

    ``Range(int, ge=1)`` is "an integer >= 1"; ``Range(float, gt=0)`` "a finite number > 0"
    (NaN and infinities are never allowed); bounds combine, e.g. ``Range(float, ge=0, lt=1)``.
    An instance is also an argparse ``type=``: the flag is parsed and checked in one go, so a
    bad value is a usage error naming the flag and what was expected.
    """

    kind: type = float
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def describe(self) -> str:
        noun = "an integer" if self.kind is int else "a finite number"
        lo = (f"[{_num(self.ge)}" if self.ge is not None else f"({_num(self.gt)}" if self.gt is not None else None)
        hi = (f"{_num(self.le)}]" if self.le is not None else f"{_num(self.lt)})" if self.lt is not None else None)
        if lo and hi:
            return f"{noun} in {lo}, {hi}"
        if lo:
            return f"{noun} {'>=' if self.ge is not None else '>'} {lo[1:]}"
        if hi:
            return f"{noun} {'<=' if self.le is not None else '<'} {hi[:-1]}"
        return noun

    def problem(self, v: Any) -> str | None:
        """None when ``v`` is allowed, else ``expected <what>, got <v>``."""
        bad = f"expected {self.describe()}, got {v!r}"
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return bad
        if self.kind is int and not isinstance(v, int):
            return bad
        if not math.isfinite(v):
            return bad
        if ((self.ge is not None and v < self.ge) or (self.gt is not None and v <= self.gt)
                or (self.le is not None and v > self.le) or (self.lt is not None and v >= self.lt)):
            return bad
        return None

    def __call__(self, text: str) -> int | float:
        """argparse ``type=``: parse ``text`` (the range is checked by ``cli.main`` after parsing, so
        that a value out of range is one ``error:`` line, not argparse's usage block)."""
        import argparse

        try:
            return int(text) if self.kind is int else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {self.describe()}, got {text!r}") from None

    @property
    def __name__(self) -> str:  # argparse names a type in some messages
        return self.kind.__name__


def _num(x: float | None) -> str:
    return str(int(x)) if x is not None and float(x).is_integer() else str(x)


#: shared ranges, named by meaning (fields and flags refer to these)
COUNT = Range(int, ge=1)  #: a size or count of at least one
NONNEG_INT = Range(int, ge=0)  #: a step count / interval where 0 means off, a seed, an offset
NONNEG = Range(float, ge=0)  #: a finite number >= 0 (weight decay, clipping, budgets with 0 = off)
POSITIVE = Range(float, gt=0)  #: a finite number > 0 (learning rates, epsilons, temperatures)
FRACTION = Range(float, ge=0, lt=1)  #: warm-up fractions, dropout probabilities
UNIT = Range(float, ge=0, le=1)  #: a probability or ratio in [0, 1]
FINITE = Range(float)  #: any finite number
SPECIAL_ID = Range(int, ge=-1)  #: a token id, -1 when absent

#: numeric CLI flags by destination name, for commands whose flags do not map onto a typed config
#: (``pretrain`` and ``finetune`` flags use TrainConfig.RANGES / FinetuneConfig.RANGES); any
#: other float flag must be finite. Applied to every subcommand by ``cli.build_parser``.
FLAG_RANGES: dict[str, Range] = {
    "batch_size": COUNT, "eval_batch_size": COUNT, "seq_len": COUNT, "max_length": COUNT, "max_new_tokens": NONNEG_INT,
    "vocab_size": COUNT, "min_frequency": NONNEG_INT, "sentinels": NONNEG_INT, "workers": NONNEG_INT,
    "val_fraction": FRACTION, "seed": NONNEG_INT, "limit": COUNT, "train_size": COUNT, "k": COUNT, "sample": COUNT,
    "n_test": COUNT, "max_text_words": COUNT, "examples": COUNT, "price_per_hour": NONNEG, "grid_intensity": NONNEG,
    "pretrain_minutes": POSITIVE, "language_alpha": POSITIVE, "sample_mb": NONNEG,
    # generate's sampling settings (temperature, top_p, top_k, num_beams, penalties) are ranged by
    # generation.GenerationConfig, which knows when they matter (temperature only with sampling);
    # here they only have to be finite
}

# a YAML 1.1 quirk: PyYAML reads 5e-4 (no dot) as the string "5e-4"; such strings are numbers
_SCI = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def check_fields(obj: Any, section: str, ranges: dict[str, Range] | None = None) -> None:
    """Check every field of dataclass ``obj`` against its type hint and ``ranges``.

    Coerces what is unambiguous (an integral float for an int field, ``"5e-4"`` for a float
    field, a list for a list field given as a tuple) and raises :class:`ConfigError` as
    ``<section>.<field>: expected <what>, got <value>`` otherwise. Enum fields are left to
    :func:`_coerce_enums`.
    """
    hints = typing.get_type_hints(type(obj))
    for f in fields(obj):
        v = getattr(obj, f.name)
        ok, nv, want = _conform(v, hints.get(f.name, Any))
        if not ok:
            raise ConfigError(f"{section}.{f.name}: expected {want}, got {v!r}")
        if nv is not v:
            setattr(obj, f.name, nv)
        rng = (ranges or {}).get(f.name)
        if rng is not None and nv is not None:
            err = rng.problem(nv)
            if err:
                raise ConfigError(f"{section}.{f.name}: {err}")


def _conform(v: Any, tp: Any) -> tuple[bool, Any, str]:
    """(value fits ``tp``, the value coerced, what ``tp`` is in words)."""
    origin = typing.get_origin(tp)
    if tp is Any or tp is typing.Any:
        return True, v, "anything"
    if origin is typing.Union or origin is types.UnionType:  # Optional[X] and X | None
        args = typing.get_args(tp)
        if v is None and type(None) in args:
            return True, v, ""
        wants = []
        for a in args:
            if a is type(None):
                continue
            ok, nv, want = _conform(v, a)
            if ok:
                return True, nv, ""
            wants.append(want)
        return False, v, " or ".join(wants) + (" (or null)" if type(None) in args else "")
    if tp is bool:
        return isinstance(v, bool), v, "true or false"
    if tp is int:
        if isinstance(v, int) and not isinstance(v, bool):
            return True, v, "an integer"
        if isinstance(v, float) and v.is_integer():
            return True, int(v), "an integer"
        return False, v, "an integer"
    if tp is float:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return True, v, "a number"
        if isinstance(v, str) and _SCI.match(v.strip()):
            return True, float(v), "a number"
        return False, v, "a number"
    if tp is str:
        return isinstance(v, str), v, "a string"
    if isinstance(tp, type) and issubclass(tp, Enum):
        return True, v, "one of: " + ", ".join(m.value for m in tp)
    if origin in (list, tuple):
        args = typing.get_args(tp)
        if not isinstance(v, (list, tuple)):
            return False, v, "a list"
        if not args:
            return True, v, ""
        out = []
        for x in v:
            ok, nx, want = _conform(x, args[0])
            if not ok:
                return False, v, f"a list of {_plural(want)}"
            out.append(nx)
        changed = isinstance(v, tuple) or any(a is not b for a, b in zip(out, v))
        return True, (out if changed else v), ""
    if origin is dict or tp is dict:
        return isinstance(v, dict), v, "a mapping"
    if dataclasses.is_dataclass(tp):
        return dataclasses.is_dataclass(v) or isinstance(v, dict), v, "a mapping"
    return True, v, ""


def _plural(want: str) -> str:
    return {"an integer": "integers", "a number": "numbers", "a string": "strings", "true or false": "booleans",
            "a mapping": "mappings", "a list": "lists"}.get(want, want)


def read_json(path: str | Path, expect: type | tuple[type, ...] = dict, what: str = "file",
              error: type[Exception] = ConfigError) -> Any:
    """Read a JSON file whose top level must be ``expect`` (a dict by default).

    Every malformed case is one line naming the file: unreadable, not UTF-8, invalid JSON
    (with the line), or valid JSON of the wrong shape (``expected a JSON object, got a list``).

    Raises:
        ``error`` (ConfigError unless told otherwise).
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{p}: {what} not found") from None
    except UnicodeDecodeError as e:
        raise error(f"{p}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise error(f"{p}: cannot read {what} ({e.strerror})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{p}:{e.lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(data, expect):
        raise error(f"{p}: expected {_json_kind(expect)}, got {_json_name(data)}")
    return data


def _json_kind(tp: type | tuple[type, ...]) -> str:
    tps = tp if isinstance(tp, tuple) else (tp,)
    return " or ".join({dict: "a JSON object", list: "a JSON list", str: "a string"}.get(t, t.__name__) for t in tps)


def _json_name(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(v), type(v).__name__)


@contextlib.contextmanager
def in_file(path: str | Path, error: type[Exception] | None = None) -> Iterator[None]:
    """Prefix a :class:`ConfigError` raised inside with ``<path>: `` (once), so a field error in a
    file's content names the file: ``run/config.json: model.d_model: expected an integer ...``."""
    try:
        yield
    except ConfigError as e:
        msg = str(e)
        if msg.startswith(str(path)):
            raise
        raise (error or type(e))(f"{path}: {msg}") from None
