"""The one loader: a pre-trained model and its tokenizer from any folder a command accepts.

``load_pretrained(spec)`` takes our folders (``save_pretrained``: ``config.json`` with
``transferlab_version`` + ``model.safetensors``), ``transformers`` folders (``config.json`` with
``model_type``) and ``builtin:NAME`` (:mod:`transferlab.hub`), and does what every command did
on its own before: the device is checked before anything is read (a bad ``--device`` costs
nothing), the model comes back in eval mode on that device and dtype, and the tokenizer is
checked against the model (:func:`~transferlab.checks.check_tokenizer`; with a tokenizer from
elsewhere also :func:`~transferlab.checks.check_same_tokenizer`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from ..errors import CheckpointError, DataError
from ..hub import is_builtin, resolve_builtin

__all__ = ["Loaded", "from_pretrained", "load_pretrained", "model_dir"]


class Loaded(NamedTuple):
    """What :func:`load_pretrained` returns; unpacks as ``model, tokenizer = load_pretrained(...)``."""

    model: Any  # TransferModel, eval mode
    tokenizer: Any  # Tokenizer


def model_dir(spec: str | Path) -> Path:
    """The folder ``spec`` names: ``builtin:NAME`` resolved, anything else an existing directory.

    Args:
        spec: a model folder or ``builtin:NAME``.

    Returns:
        The directory.

    Raises:
        CheckpointError: an unknown built-in name, or no such directory.
    """
    if is_builtin(spec):
        return resolve_builtin(spec)
    d = Path(spec)
    if not d.is_dir():
        raise CheckpointError(f"{d}: not a model directory (no such model directory; expected a folder with "
                              "config.json or builtin:NAME)")
    return d


def from_pretrained(path: str | Path, device: Any = None, dtype: Any = None, torch_dtype: Any = None,
                    **overrides: Any) -> Any:
    """A model from our folder, a transformers folder or ``builtin:NAME`` (no tokenizer).

    The dispatch lives here so that :mod:`transferlab.models` needs to know nothing about
    transformers: our folders go to :func:`transferlab.models.model.from_pretrained`, folders
    whose ``config.json`` has a ``model_type`` (and no ``transferlab_version``) to
    :func:`transferlab.interop.hf.from_hf`.

    Args:
        path: the folder or ``builtin:NAME``.
        device: where to put the model (None: leave it on the CPU).
        dtype: the weights' dtype as :func:`transferlab.models.model.from_pretrained` takes it
            (``torch.bfloat16``, ``"bf16"``, ``"auto"`` for the checkpoint's own; None: float32).
        torch_dtype: the older ``transformers`` name of ``dtype``.
        **overrides: model config fields set before the modules are built.

    Returns:
        The model in eval mode.
    """
    from ..models import model as ours

    d = resolve_builtin(path)
    raw = ours.read_config(d)
    if "model_type" not in raw or "transferlab_version" in raw:
        return ours.from_pretrained(d, device=device, dtype=dtype, torch_dtype=torch_dtype, **overrides)
    from .hf import from_hf

    want = ours.resolve_load_dtype(dtype, torch_dtype)  # validated before the weights are read
    model = from_hf(d, **overrides).eval()
    if want == "auto":
        want = ours.checkpoint_dtype(d, raw)
    if device is not None or want is not None:
        model = model.to(device=device, dtype=want)
    return model


def load_pretrained(spec: str | Path, *, tokenizer: str | Path | None = None, device: Any = "auto",
                    dtype: Any = None, **overrides: Any) -> Loaded:
    """A pre-trained model (eval mode, on ``device``, in ``dtype``) and the tokenizer that goes with it.

    Args:
        spec: our model folder, a ``transformers`` folder or ``builtin:NAME``.
        tokenizer: a folder to take the tokenizer from instead of ``spec`` (it must tokenize as
            the model's own does when ``spec`` has one: see ``check_same_tokenizer``).
        device: ``auto | cpu | cuda | cuda:N | mps`` or a ``torch.device``
            (:func:`~transferlab.runtime.resolve_device`); None is ``auto``.
        dtype: the weights' dtype (``torch.float32``, ``"bf16"``, ... as
            :func:`~transferlab.models.model.from_pretrained` takes); None keeps float32.
        **overrides: model config fields set before the modules are built (``dropout=0.0``).

    Returns:
        ``Loaded(model, tokenizer)``.

    Raises:
        CheckpointError: no model at ``spec``, or no tokenizer beside it (or at ``tokenizer``).
    """
    from ..checks import check_same_tokenizer, check_tokenizer
    from ..runtime import resolve_device
    from ..tokenizer import Tokenizer

    d = model_dir(spec)
    dev = resolve_device(device)  # before loading: a bad --device costs nothing
    model = from_pretrained(d, dtype=dtype, **overrides)
    tok_src = Path(tokenizer) if tokenizer is not None else d
    try:
        tok = Tokenizer.from_pretrained(tok_src)
    except DataError as e:
        where = f"--tokenizer {tokenizer}" if tokenizer is not None else f"{d}"
        raise CheckpointError(f"{where}: no tokenizer beside the model ({e}); folders written by pretrain/finetune "
                              "contain one") from None
    check_tokenizer(model.config, tok, f"tokenizer {tokenizer}" if tokenizer is not None else str(d))
    if tokenizer is not None and str(tokenizer) != str(spec):
        check_same_tokenizer(d, tok, f"--tokenizer {tokenizer}")
    return Loaded(model.to(dev).eval(), tok)
