"""The contract every pre-training objective follows: :class:`Objective`, an abstract base class.

An objective never subclasses the model. It is a dataset view, a collator and a loss, plus the
few facts the trainer, ``pretrain`` and the cost report need; the trainer reads only these
members (no ``getattr`` probing, no objective names in trainer code).

Abstract (every objective implements them):

1. ``check_model(cfg)`` — raises :class:`~transferlab.errors.ConfigError` when the objective does
   not fit the family (clm needs a decoder, denoise an encoder-decoder, ...);
2. ``dataset(shards, seq_len)`` — a deterministic, index-addressable view of the prepared token
   shards (``len`` + ``__getitem__``), e.g. packed windows or sentence pairs; O(1) memory. The
   trainer's :class:`~transferlab.training.distributed.GlobalSampler` shards it over ranks;
3. ``collate(examples, rng)`` — turns a list of examples into a batch dict of tensors, drawing all
   randomness (masking, noise) from ``rng`` (a ``numpy.random.Generator`` owned and checkpointed
   by the trainer, or per-example streams when ``per_example_rng``). The batch holds
   ``n_targets`` (a 0-d long tensor): the number of predicted tokens, so the trainer can
   normalise the loss over a whole accumulated (and distributed) batch;
4. ``compute(module, batch) -> (loss_sum, {metric: 0-d tensor})`` — the *sum* of per-target
   losses (the trainer divides by the total ``n_targets``) and detached metrics, named as in
   ``metric_names``. ``module`` is what ``wrap_model`` returned (``module.model`` is the
   TransferModel) or a bare model.

Declared with defaults (override where the objective differs):

* ``name``, ``family`` (the :class:`~transferlab.config.Family` it needs), ``heads`` (e.g.
  ``{"lm": {}, "nsp": {}}``), ``config`` (its settings dataclass), ``start`` (the decoder start
  token of encoder-decoder objectives, else None);
* ``metric_names`` — the metrics ``compute`` returns; ``lm_loss_metric`` — the one whose exp is
  the reported perplexity (None: the whole loss is the LM loss);
* ``sparse_targets`` — only the targets reach the vocabulary projection (MLM-style), which the
  default FLOPs estimate needs to know; ``step_flops(...)`` — the FLOPs of one step when the
  default estimate cannot see the shapes (plm's query slots, mass's short decoder), else None;
* ``per_example_rng`` — masks drawn per example (:mod:`.example_rng`);
* ``global_counts(batch)`` — counts the trainer sums over the whole step and hands back as
  ``batch["global_counts"]`` (ELECTRA's two normalisations); ``{}``: none;
* ``wrap_model(model) -> nn.Module`` — the module the trainer optimises, checkpoints and hands
  to DDP/FSDP/compile. Its ``forward(**batch)`` *returns the loss* ``(loss_sum, metrics)``, so
  everything (the sparse MLM gather and, for ELECTRA, the generator) runs inside one forward,
  which DDP/FSDP need to synchronise gradients. For ELECTRA it is an
  :class:`~transferlab.objectives.electra.ElectraPair` that *owns the generator*; for the others
  a thin :class:`ObjectiveModule`. Usage::

       module = objective.wrap_model(model)           # before .to(device) and DDP/FSDP
       optimizer = AdamW(param_groups(module, ...))   # includes ELECTRA's generator
       loss_sum, metrics = module(**batch)            # or objective.loss(module, batch)
       (loss_sum / total_n_targets).backward()
       objective.unwrap_model(module).save_pretrained(out_dir)   # what fine-tuning loads

* ``unwrap_model(module) -> TransferModel`` — strips DDP / compile / the objective wrapper and
  returns the model that fine-tuning loads (for ELECTRA: the discriminator);
* ``loss(model, batch) -> LossOutput`` — ``compute`` with float metrics, through the wrapper's
  forward when ``model`` is wrapped (refusing to bypass DDP);
* ``model_settings()`` — family, heads, vocabulary size and special ids (by
  :meth:`transferlab.specials.SpecialIds.resolve`, as pre-training sets them) as ModelConfig fields:
  ``get_preset("bert-mini", **objective.model_settings())`` fits ``check_model``.

Loss normalisation: ``loss_sum / n_targets`` over any set of micro-batches is the paper's
mean-based loss. Two-part losses rescale their second part by the whole step's counts (the
trainer's ``global_counts``): ``mlm+nsp`` returns ``mlm_sum + nsp_weight * nsp_sum * N_mlm /
N_pairs`` and ELECTRA ``gen_sum + disc_weight * disc_sum * N_mlm / N_tok`` with ``n_targets =
n_mlm`` (the masked tokens), so the step's ``loss_sum / N_mlm`` is exactly ``mlm_mean + weight *
other_mean`` of the large batch, however it is split (one batch's own counts outside the trainer).

Randomness: every objective draws per example (``per_example_rng``) or has none (clm); what
must be one draw per step (mtlm's attention mode) comes from ``ExampleRNG.per_step``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
import torch.nn as nn

from ..errors import ConfigError, DataError
from ..specials import SpecialIds
from .losses import lm_cross_entropy, sparse_ce  # noqa: F401  (re-exported: the one LM loss)


@dataclass
class LossOutput:
    loss_sum: torch.Tensor  # 0-d, sum over this micro-batch's targets (weights included)
    metrics: dict[str, float] = field(default_factory=dict)  # e.g. {"mlm_loss": .., "nsp_acc": ..}


# ---------------------------------------------------------------------------- special ids
_NAMED = ("pad", "unk", "cls", "sep", "mask", "bos", "eos")


@dataclass
class TokenizerIds:
    """A tokenizer's vocabulary as collators see it: its size, every special id, sentinels and
    continuation mask (tests build one directly, without a trained tokenizer).

    This is the inventory of what is special (never masked, never a random replacement); which id
    serves as pad/bos/eos/decoder start is decided by :meth:`transferlab.specials.SpecialIds.resolve`.
    ``TokenizerIds.from_tokenizer(tok)`` reads them from a :class:`~transferlab.tokenizer.Tokenizer`.
    Every id in ``all_special_ids`` (named ones, sentinels, ``extra_special_ids``) is never picked
    for masking or noise and never drawn as a random replacement token.
    """

    vocab_size: int
    """Size of the vocabulary (ids are 0..vocab_size-1)."""
    pad_token_id: int | None = None
    unk_token_id: int | None = None
    cls_token_id: int | None = None
    sep_token_id: int | None = None
    mask_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    sentinel_token_ids: tuple[int, ...] = ()
    """T5 sentinels <extra_id_0>, <extra_id_1>, ... in that order."""
    extra_special_ids: tuple[int, ...] = ()
    """Any other special ids (e.g. the rest of the tokenizer's ``all_special_ids``)."""
    continuation: np.ndarray | None = field(default=None, repr=False, compare=False)
    """Optional bool (vocab_size,): True for tokens that continue a word (``##ing``; GPT-2 pieces
    without a leading space). Needed by whole-word masking."""

    def __post_init__(self) -> None:
        if self.vocab_size <= 0:
            raise ConfigError(f"vocab_size must be positive, got {self.vocab_size}")
        self.sentinel_token_ids = tuple(int(i) for i in self.sentinel_token_ids)
        self.extra_special_ids = tuple(int(i) for i in self.extra_special_ids)
        for i in self.all_special_ids:
            if not 0 <= i < self.vocab_size:
                raise ConfigError(f"special token id {i} is outside the vocabulary (size {self.vocab_size})")
        is_special = np.zeros(self.vocab_size, dtype=bool)
        is_special[list(self.all_special_ids)] = True
        self.is_special = is_special  # (V,) lookup table: is_special[ids] marks special positions
        self.normal_ids = np.flatnonzero(~is_special)  # pool for random replacement tokens
        if self.continuation is not None:
            c = np.asarray(self.continuation, dtype=bool)
            if c.shape != (self.vocab_size,):
                raise ConfigError(f"continuation mask has shape {c.shape}, expected ({self.vocab_size},)")
            self.continuation = c

    @property
    def all_special_ids(self) -> tuple[int, ...]:
        named = [getattr(self, f"{n}_token_id") for n in _NAMED]
        ids = {int(i) for i in named if i is not None} | set(self.sentinel_token_ids) | set(self.extra_special_ids)
        return tuple(sorted(ids))

    @classmethod
    def from_tokenizer(cls, tok: Any) -> "TokenizerIds":
        """Read the ids from a tokenizer with ``vocab_size``, ``<name>_token_id`` attributes,
        ``sentinel_token_ids``, ``all_special_ids`` and ``continuation_mask()``."""
        kw = {f"{n}_token_id": getattr(tok, f"{n}_token_id", None) for n in _NAMED}
        cont = None
        if callable(getattr(tok, "continuation_mask", None)):
            cont = np.asarray(tok.continuation_mask(), dtype=bool)
        return cls(
            vocab_size=int(tok.vocab_size),
            sentinel_token_ids=tuple(getattr(tok, "sentinel_token_ids", None) or ()),
            extra_special_ids=tuple(getattr(tok, "all_special_ids", None) or ()),
            continuation=cont,
            **kw,
        )

    def require(self, objective: str, *names: str) -> None:
        """Raise ConfigError unless every named id (``mask``, ``eos``, ...) exists."""
        missing = [n for n in names if getattr(self, f"{n}_token_id") is None]
        if missing:
            raise ConfigError(
                f"objective {objective!r} needs a tokenizer with {', '.join(m + '_token' for m in missing)}; "
                "train or load one that defines it"
            )

    def check_ids(self, ids: np.ndarray) -> None:
        """DataError when token ids fall outside this vocabulary (shards from another tokenizer)."""
        if ids.size and (int(ids.max()) >= self.vocab_size or int(ids.min()) < 0):
            bad = int(ids.max()) if int(ids.max()) >= self.vocab_size else int(ids.min())
            raise DataError(
                f"token id {bad} is outside the tokenizer's vocabulary of {self.vocab_size}: "
                "the data was prepared with a different tokenizer"
            )


def as_tokenizer_ids(tokenizer: Any) -> TokenizerIds:
    """A :class:`TokenizerIds` from a TokenizerIds or a tokenizer.

    Args:
        tokenizer: a :class:`~transferlab.tokenizer.Tokenizer` (or anything with its attributes)
            or a :class:`TokenizerIds` (returned as it is).

    Returns:
        The collators' view of the vocabulary.
    """
    return tokenizer if isinstance(tokenizer, TokenizerIds) else TokenizerIds.from_tokenizer(tokenizer)


# ---------------------------------------------------------------------------- model wrapping
class ObjectiveModule(nn.Module):
    """What the trainer optimises: the model (plus any objective-owned modules), with
    ``forward(**batch) -> (loss_sum, metrics)`` so DDP, FSDP and ``torch.compile`` see the whole
    loss computation. Built by ``objective.wrap_model(model)``; ``.model`` is the TransferModel."""

    def __init__(self, objective: "Objective", model: nn.Module):
        super().__init__()
        self.model = model
        self._objective = [objective]  # a list: not a submodule, not in the state dict

    @property
    def objective(self) -> "Objective":
        return self._objective[0]

    def forward(self, **batch: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The objective's loss on ``batch``: ``(loss_sum, {metric: 0-d tensor})``."""
        return self.objective.compute(self, batch)


def strip_wrappers(module: nn.Module) -> nn.Module:
    """Remove DistributedDataParallel/FSDP (``.module``) and ``torch.compile`` (``._orig_mod``)."""
    while True:
        if hasattr(module, "_orig_mod"):
            module = module._orig_mod
        elif isinstance(getattr(module, "module", None), nn.Module):
            module = module.module
        else:
            return module


class Objective(ABC):
    """The abstract base of every pre-training objective; see the module docstring.

    Subclasses implement :meth:`check_model`, :meth:`dataset`, :meth:`collate` and
    :meth:`compute`, and set the class attributes that differ from the defaults below.
    """

    name: ClassVar[str] = ""
    """Registry name (``mlm``, ``clm``, ...), recorded in the run's config.json."""
    family: ClassVar[Any] = None
    """The :class:`~transferlab.config.Family` the objective trains."""
    heads: ClassVar[dict[str, dict]] = {}
    """Model heads the objective needs (name -> head settings)."""
    metric_names: ClassVar[tuple[str, ...]] = ()
    """The metrics :meth:`compute` returns (logged per step and, prefixed ``val_``, per evaluation)."""
    lm_loss_metric: ClassVar[str | None] = None
    """The metric whose exp is the reported perplexity; None: the whole loss is the LM loss."""
    sparse_targets: ClassVar[bool] = False
    """Only the ``n_targets`` positions reach the vocabulary projection (billed as such)."""
    per_example_rng: ClassVar[bool] = False
    """Masks/noise drawn per example (:mod:`.example_rng`): the same whatever the batch split."""
    config: Any = None
    """The objective's settings dataclass (None: no settings)."""
    start: int | None = None
    """Decoder start token id of an encoder-decoder objective's collator (BART eos, T5 pad)."""

    # the objective itself -------------------------------------------------------------------
    @abstractmethod
    def check_model(self, cfg: Any) -> None:
        """Raise ConfigError unless a model with config (or model) ``cfg`` fits this objective."""

    @abstractmethod
    def dataset(self, shards: Any, seq_len: int) -> Sequence[Any]:
        """An index-addressable, deterministic view of ``shards`` for windows of ``seq_len``."""

    @abstractmethod
    def collate(self, examples: list[Any], rng: Any) -> dict[str, torch.Tensor]:
        """A batch dict (with a 0-d ``n_targets``) from ``examples``, randomness from ``rng``."""

    @abstractmethod
    def compute(self, module: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(loss_sum, {metric: 0-d tensor})`` of one micro-batch.

        Args:
            module: a bare TransferModel or what :meth:`wrap_model` returned (``module.model``).
            batch: what :meth:`collate` returned, on the model's device.

        Returns:
            The 0-d sum of per-target losses and the detached metrics named in ``metric_names``.
        """

    # what the trainer asks ------------------------------------------------------------------
    def global_counts(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """Counts of a micro-batch that the trainer sums over the whole step (all micro-batches
        and ranks) and passes back as ``batch["global_counts"]``; ``{}`` (the default): none."""
        return {}

    def step_flops(self, cfg: Any, seq_len: int, step_tokens: float, n_targets: float) -> float | None:
        """Training FLOPs of one optimiser step from its global token and target counts.

        Args:
            cfg: the trained model's ModelConfig.
            seq_len: ``train.seq_len``.
            step_tokens: input tokens of the step (all micro-batches and ranks).
            n_targets: predicted tokens of the step.

        Returns:
            The FLOPs, or None (the default): bill ``step_tokens / seq_len`` sequences with
            :func:`~transferlab.cost.estimate_flops` (only the targets projected to the
            vocabulary when ``sparse_targets``).
        """
        return None

    def wrap_model(self, model: nn.Module) -> nn.Module:
        """The module to optimise/checkpoint/DDP-wrap: ``forward(**batch)`` returns this loss."""
        if isinstance(strip_wrappers(model), ObjectiveModule):
            return model
        return ObjectiveModule(self, model)

    def unwrap_model(self, module: nn.Module) -> nn.Module:
        """The TransferModel to save for fine-tuning (strips DDP, compile and the wrapper)."""
        core = strip_wrappers(module)
        return strip_wrappers(core.model) if isinstance(core, ObjectiveModule) else core

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
        """Sum of per-target losses and float metrics; ``model`` is bare, wrapped, or DDP/compiled.

        Args:
            model: a TransferModel, what :meth:`wrap_model` returned, or DDP/compile around it.
            batch: a collated batch on the model's device.

        Returns:
            :class:`LossOutput` with the 0-d loss sum and the metrics as floats.
        """
        core = strip_wrappers(model)
        if isinstance(core, ObjectiveModule):
            loss_sum, metrics = model(**batch)  # through DDP/compile when present
        else:
            if core is not model and hasattr(model, "module"):
                # calling the inner model would bypass DDP's forward: gradients would silently
                # not be synchronised across ranks.
                raise TypeError(
                    f"objective {self.name!r}: wrap the model with objective.wrap_model(model) "
                    "before DistributedDataParallel/FSDP"
                )
            loss_sum, metrics = self.compute(core, batch)
        return LossOutput(loss_sum, metric_floats(metrics))

    def model_settings(self) -> dict[str, Any]:
        """ModelConfig fields that make a model fit this objective and tokenizer: family, heads,
        vocabulary size, special ids (pad/bos/eos, the decoder start of encoder-decoders) and
        what the objective needs besides (NSP: segments and a pooler). Usage:
        ``cfg = get_preset("bert-mini", **objective.model_settings())``."""
        sp = self.sp
        out: dict[str, Any] = {"family": self.family.value, "vocab_size": sp.vocab_size,
                               "heads": {h: dict(v) for h, v in self.heads.items()}}
        # the ids pre-training gives the model (training.pretrain.fit_config_to_tokenizer): one rule
        ids = SpecialIds.resolve(tokenizer=sp, decoder_start=self.start)
        fields = ids.config_fields()
        if self.start is None:
            fields.pop("decoder_start_token_id", None)  # decoders/encoders have no decoder start
        out.update(fields)
        return out

    # helpers ----------------------------------------------------------------------------------
    @staticmethod
    def _model_of(module: nn.Module) -> nn.Module:
        return module.model if isinstance(module, ObjectiveModule) else module

    def _check_common(self, cfg: Any, family: Any, specials: TokenizerIds) -> Any:
        """Family, vocabulary and heads checks shared by every objective; returns the config."""
        from ..config import Family

        cfg = getattr(cfg, "config", cfg)  # accept a model as well as a ModelConfig
        # the kind of stack matters, not the name: a registered causal family (an LSTM LM) is a
        # decoder to clm, a registered encoder-decoder one to the denoisers
        kind = (Family.ENCODER_DECODER if cfg.is_encoder_decoder else
                Family.DECODER if cfg.is_causal else Family.ENCODER)
        if kind != family:
            need = {Family.ENCODER: "an encoder", Family.DECODER: "a decoder",
                    Family.ENCODER_DECODER: "an encoder-decoder"}[family]
            raise ConfigError(
                f"objective {self.name!r} needs {need} (model.family={family.value}), "
                f"got model.family={cfg.family}"
            )
        if cfg.vocab_size < specials.vocab_size:
            raise ConfigError(
                f"model.vocab_size={cfg.vocab_size} is smaller than the tokenizer's vocabulary "
                f"({specials.vocab_size}); set model.vocab_size={specials.vocab_size}"
            )
        heads = getattr(cfg, "heads", {}) or {}
        for h in self.heads:
            if h not in heads:
                raise ConfigError(
                    f"objective {self.name!r} needs model head(s) {', '.join(repr(x) for x in self.heads)}; "
                    f"model.heads has {', '.join(repr(x) for x in heads) or 'none'}"
                )
        return cfg


#: the old name of :class:`Objective`, kept importable
ObjectiveBase = Objective

def metric_floats(metrics: dict[str, Any]) -> dict[str, float]:
    """Metrics as floats with one device sync for all instead of one ``.item()`` each.

    Args:
        metrics: name -> 0-d tensor (or number).

    Returns:
        name -> float, in the same order.
    """
    if not metrics:
        return {}
    keys = list(metrics)
    vals = torch.stack([torch.as_tensor(metrics[k]).detach().float().reshape(()) for k in keys]).tolist()
    return dict(zip(keys, vals))


def pad_stack(rows: list[np.ndarray], pad_id: int, length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad 1-D int arrays into (B, T) ids and a (B, T) 0/1 attention mask."""
    T = max((len(r) for r in rows), default=0) if length is None else length
    ids = np.full((len(rows), T), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), T), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i, : len(r)] = 1
    return ids, mask


def make_config(cls: type, config: Any = None, settings: dict[str, Any] | None = None, where: str = "") -> Any:
    """Build an objective config dataclass from an instance and/or keyword settings.

    Unknown keys raise ConfigError listing the known ones; string values (from the CLI or
    dotted overrides) are coerced to the field's type (a list also from ``"a,b"``).
    Calls ``validate()``.
    """
    import dataclasses
    import typing

    from ..config import _parse_value

    obj = dataclasses.replace(config) if config is not None else cls()
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k, v in (settings or {}).items():
        key = k.replace("-", "_")
        if key not in names:
            raise ConfigError(
                f"{where or cls.__name__}: unknown setting {k!r}; known: {', '.join(sorted(names))}"
            )
        if isinstance(v, str) and typing.get_origin(hints[key]) is list and not v.lstrip().startswith("["):
            v = [p.strip() for p in v.replace("+", ",").split(",") if p.strip()]  # "infill,permute"
        elif isinstance(v, str) and hints[key] is not str:
            v = _parse_value(v, hints[key], f"{where}.{key}" if where else key)
        setattr(obj, key, v)
    obj.validate()
    return obj


def ratio(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a / max(b, 1) as float, detached (for metrics)."""
    return a.detach().float() / b.detach().float().clamp(min=1)


def describe_settings(cls: type) -> list[tuple[str, str, Any, str]]:
    """(name, type, default, docstring) of every field of an objective config dataclass, the
    docstrings read from the attribute docstrings in the source (for ``--help``-style listings)."""
    import ast
    import dataclasses
    import inspect
    import textwrap

    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):  # a subclass's docstring wins
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):  # pragma: no cover - no source available
            continue
        body = tree.body[0].body
        for a, b in zip(body, body[1:]):
            if (isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name) and isinstance(b, ast.Expr)
                    and isinstance(getattr(b, "value", None), ast.Constant) and isinstance(b.value.value, str)):
                docs[a.target.id] = " ".join(b.value.value.split())
    out = []
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        tp = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        out.append((f.name, tp, default, docs.get(f.name, "")))
    return out
