"""The task-type contract and its registry: one :class:`TaskType` subclass per file.

A task type owns everything that differs between tasks: how a file row becomes an example
(:meth:`TaskType.convert`), its label set, how examples become model inputs (:meth:`encode`,
:meth:`collate`), the head it trains, its loss, how outputs become predictions and which metrics
score them. Class-level members answer questions about data (no model needed); an instance is
the *wiring* of one task onto one tokenizer and model config. The fine-tuning loop, evaluation
and prediction only call these members, so a new task type is one file that subclasses
:class:`TaskType` and calls :func:`register_task_type` (see ``docs/extending.md``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, ClassVar, Sequence

import torch

from ...config import ModelConfig
from ...data.corpus import names, quote
from ...errors import ConfigError, DataError
from ...models.backbone import family_info
from ..inputs import InputBuilder, decoder_start_id, pad_to, position_limit, sorted_batches

if TYPE_CHECKING:  # annotations only: finetune.config validates task types through this package
    from ..config import TaskSpec

__all__ = ["TaskType", "TASK_TYPES", "register_task_type", "get_task_type", "task_type_names", "build_wiring",
           "row_field", "row_text"]


# ------------------------------------------------------------------------------ registry
#: task-type name -> class, in registration order (the order ``--task-type`` lists them)
TASK_TYPES: dict[str, type["TaskType"]] = {}


def register_task_type(cls: type["TaskType"], replace: bool = False) -> type["TaskType"]:
    """Make ``cls.name`` a task type that task files, ``--task-type`` and ``task.json`` accept.

    Args:
        cls: a :class:`TaskType` subclass with ``name`` and ``head`` set.
        replace: allow re-registering a name (tests).

    Returns:
        ``cls`` (so it can be used as a class decorator).
    """
    if not (isinstance(cls, type) and issubclass(cls, TaskType)) or not cls.name:
        raise TypeError(f"register_task_type: {cls!r} is not a TaskType subclass with a name")
    if cls.name in TASK_TYPES and not replace and TASK_TYPES[cls.name] is not cls:
        raise ConfigError(f"task type {cls.name!r} is already registered ({TASK_TYPES[cls.name].__name__})")
    TASK_TYPES[cls.name] = cls
    return cls


def task_type_names() -> tuple[str, ...]:
    """The registered task-type names, in registration order."""
    return tuple(TASK_TYPES)


def get_task_type(name: Any) -> type["TaskType"]:
    """The task type called ``name``; a one-line :class:`ConfigError` listing the known ones otherwise."""
    try:
        return TASK_TYPES[str(name)]
    except KeyError:
        raise ConfigError(f"unknown task type {quote(str(name))}; expected one of: {', '.join(TASK_TYPES)}") from None


def build_wiring(spec: TaskSpec, tok: Any, cfg: ModelConfig) -> "TaskType":
    """The wiring of ``spec.task_type`` for this tokenizer and model config.

    Raises:
        ConfigError: an unknown task type, or a model family that cannot do the task.
    """
    if spec.task_type not in TASK_TYPES:
        raise ConfigError(f"unknown task type {spec.task_type!r}; expected one of: {', '.join(TASK_TYPES)}")
    w = TASK_TYPES[spec.task_type](spec, tok, cfg)
    w.check_model(cfg)
    return w


# ------------------------------------------------------------------------------ row helpers
def row_field(row: dict[str, Any], name: str, where: str, what: str) -> Any:
    """``row[name]``, or a :class:`DataError` naming the file line, the column and the flag to pass."""
    if name not in row:
        flag = ("label" if what in ("label", "target", "answer", "tags")
                else "text" if what in ("text", "source", "context", "tokens") else "pair")
        raise DataError(f"{where}: no {what} column {quote(name)} (columns: {names(row)}); pass --{flag}-column")
    return row[name]


def row_text(row: dict[str, Any], name: str, where: str, what: str) -> str:
    """A non-empty string field of a row (see :func:`row_field`)."""
    v = row_field(row, name, where, what)
    if v is None or (isinstance(v, str) and not v.strip()):
        raise DataError(f"{where}: empty {what} in column {quote(name)}")
    if not isinstance(v, str):
        raise DataError(f"{where}: {what} in column {quote(name)} must be a string, got {type(v).__name__}")
    return v


# ------------------------------------------------------------------------------ the contract
class TaskType:
    """One kind of fine-tuning task: data layout, inputs, head, loss, predictions and metrics.

    Subclasses set the class attributes and implement :meth:`convert`, :meth:`encode`,
    :meth:`loss_sum`, :meth:`predict`, :meth:`reference` and :meth:`metrics` (and :meth:`majority` when
    :attr:`baselines` lists it).
    """

    #: registry name (``task_type`` in configs, files and ``task.json``)
    name: ClassVar[str] = ""
    #: name of the model head this task trains (``models/heads.py``)
    head: ClassVar[str] = ""
    #: the metric model selection and studies rank by (a key of :meth:`metrics`)
    primary_metric: ClassVar[str] = ""
    #: one class name per example: stratified subsampling, a sorted label list, label checks
    has_classes: ClassVar[bool] = False
    #: usual field names ``(text, pair, label)`` of a user file (see ``tasks.Columns``)
    default_columns: ClassVar[tuple[str, str | None, str]] = ("text", None, "label")
    #: fields a prediction input must hold
    input_fields: ClassVar[tuple[str, ...]] = ("text",)
    #: for an input of two texts (``input_fields`` = (first, second)): the ``predict`` flag that
    #: gives the second (``"pair"`` or ``"question"``) and what to say it is when it is missing
    second_input: ClassVar[tuple[str, str] | None] = None
    #: fields that hold the answer (dropped from prediction inputs)
    label_fields: ClassVar[tuple[str, ...]] = ("label",)
    #: whether CoNLL-style ``token<TAB>tag`` files hold this task's data
    reads_conll: ClassVar[bool] = False
    #: the baselines of ``experiments/baselines.py`` that fit this task type (``majority`` calls
    #: :meth:`majority`; ``tfidf-*`` read ``text``/``pair``/``label``; ``lead`` ``source``/``target``)
    baselines: ClassVar[tuple[str, ...]] = ()

    # ------------------------------------------------------------------ data (no model needed)
    @classmethod
    def matches_fields(cls, fields: set[str]) -> bool:
        """Whether a file whose rows hold ``fields`` (and no column flags) is of this type (type
        inference, see ``tasks.infer_task_type``). Default: never (label-column types are inferred
        from their label values)."""
        return False

    @classmethod
    def convert(cls, row: dict[str, Any], cols: dict[str, str | None], where: str) -> dict[str, Any]:
        """One normalised example from a row of a user file (``cols["label"]`` None: unlabelled)."""
        raise NotImplementedError

    @classmethod
    def label_list(cls, examples: Sequence[dict[str, Any]]) -> list[str]:
        """The label set of training examples (sorted classes, ordered tags) or []."""
        return sorted({e["label"] for e in examples}) if cls.has_classes else []

    @classmethod
    def order_labels(cls, labels: Sequence[str]) -> list[str]:
        """A built-in task's label list in the order this task type indexes it."""
        return list(labels)

    @classmethod
    def check_labels(cls, examples: Sequence[dict[str, Any]], labels: Sequence[str], train_name: str) -> None:
        """Raise :class:`DataError` if an example's label never appears in training."""
        if not cls.has_classes:
            return
        known = set(labels)
        for k, e in enumerate(examples):
            if e["label"] not in known:
                raise DataError(
                    f"{e.get('_where', f'example {k}')}: label {quote(e['label'])} never appears in the training data "
                    f"({train_name}); known labels: {names(sorted(known))}"
                )

    @classmethod
    def tokenizer_texts(cls, ex: dict[str, Any]) -> list[str]:
        """The texts of an example a tokenizer trained in-process learns from."""
        return [ex["text"]] + ([ex["pair"]] if "pair" in ex else [])

    @classmethod
    def feature_texts(cls, ex: dict[str, Any]) -> tuple[str, str | None]:
        """``(text, second text or None)`` that frozen-feature extraction encodes for an example."""
        return ex["text"], None

    @classmethod
    def from_text(cls, text: str, where: str) -> dict[str, Any]:
        """A prediction input from a bare string (refused where the input is two texts)."""
        if cls.second_input is not None:
            first, second = cls.input_fields
            raise DataError(f"{where}: a {cls.name} model needs a {first} and a {second} per input (a dict, or "
                            "--question / --pair on the command line)")
        return {"text": text}

    @classmethod
    def cli_inputs(cls, texts: list[str], pair: str | None, question: str | None) -> list[Any]:
        """Prediction inputs from ``predict --text ... [--pair/--question]``: the texts, or with
        :attr:`second_input` one dict per text holding the flag's text as the second field."""
        if cls.second_input is None:
            return list(texts)
        flag, what = cls.second_input
        other = {"pair": pair, "question": question}[flag]
        if not other:
            raise ConfigError(f"predict: a {cls.name} model needs --{flag} ({what})")
        first, second = cls.input_fields
        return [{first: t, second: other} for t in texts]

    @classmethod
    def line(cls, record: dict[str, Any]) -> str:
        """The one line ``transferlab predict`` prints for a prediction record."""
        return str(record["prediction"])

    @classmethod
    def fit_spec(cls, spec: TaskSpec, train: Sequence[dict[str, Any]]) -> None:
        """Record statistics of the training examples in ``spec`` (regression's target scale)."""

    @classmethod
    def metrics(cls, predictions: list[Any], references: list[Any], labels: Sequence[str] | None) -> dict[str, float]:
        """``{metric: value}`` of plain predictions against references (``labels``: the label set, or None)."""
        raise NotImplementedError

    @classmethod
    def majority(cls, train: Sequence[dict[str, Any]]) -> Callable[[Sequence[dict[str, Any]]], list[Any]]:
        """The ``majority`` baseline fitted on training examples (for types that list it in :attr:`baselines`).

        Args:
            train: normalised training examples.

        Returns:
            A function of examples to one plain prediction each (the form :meth:`metrics` takes).
        """
        raise NotImplementedError(f"task type {cls.name!r} has no majority baseline")

    # ------------------------------------------------------------------ the wiring
    def __init__(self, spec: TaskSpec, tok: Any, cfg: ModelConfig):
        self.spec, self.tok, self.cfg = spec, tok, cfg
        self.builder = InputBuilder(tok, cfg)
        limit = position_limit(cfg)
        self.max_length = min(spec.max_length, limit) if limit else spec.max_length
        # what the family's backbone is, not its name: a registered family (an LSTM LM) fits too
        bb = family_info(cfg.family).backbone
        #: the input is encoded once and read again by a causal decoder (BART, T5)
        self.encoder_decoder = bool(bb.is_encoder_decoder)
        #: one causal stack continues the text (GPT, an RNN LM)
        self.decoder_only = bool(bb.can_generate) and not self.encoder_decoder

    # -- model
    def head_settings(self) -> dict[str, Any]:
        """Keyword arguments of ``model.add_head`` for this task's head."""
        return {}

    def setup_model(self, model: Any, fresh: bool) -> None:
        """Keep only this task's head; add it (freshly initialised) when ``fresh`` or missing."""
        for name in list(model.heads):
            if name != self.head:
                model.remove_head(name)
        if fresh or self.head not in model.heads:
            model.add_head(self.head, **self.head_settings())

    @classmethod
    def check_model(cls, cfg: ModelConfig) -> None:
        """Raise :class:`ConfigError` when the family cannot do this task (a class method: studies
        ask it of a preset before any model exists)."""

    # -- data
    def encode(self, examples: Sequence[dict[str, Any]], train: bool) -> list[dict[str, Any]]:
        """Features (token ids and targets) of the examples; one or more per example."""
        raise NotImplementedError

    def collate(self, feats: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """A padded batch (B, T) of features."""
        ids = pad_to([f["input_ids"] for f in feats], self.builder.pad_id)
        batch = {"input_ids": ids, "attention_mask": pad_to([[1] * len(f["input_ids"]) for f in feats], 0)}
        if self.builder.use_types and feats[0].get("token_type_ids") is not None:
            batch["token_type_ids"] = pad_to([f["token_type_ids"] for f in feats], 0)
        return batch

    def n_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        """Non-padding tokens the model reads (encoder-decoders read the input twice here)."""
        n = int(batch["attention_mask"].sum())
        return 2 * n if self.encoder_decoder else n

    def batch_flops(self, batch: dict[str, torch.Tensor]) -> float:
        """Training FLOPs of one batch from the analytic model, sequence by sequence (real lengths,
        so padding is not counted as useful work)."""
        estimate_flops = family_info(self.cfg.family).backbone.estimate_flops  # the family's own count
        enc_dec = self.encoder_decoder
        lengths = batch["attention_mask"].sum(1).tolist()
        return sum(estimate_flops(self.cfg, n, "train", decoder_len=n if enc_dec else None) for n in lengths)

    def logits(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Run the backbone and this task's head."""
        kw: dict[str, Any] = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "head": self.head}
        if "token_type_ids" in batch:
            kw["token_type_ids"] = batch["token_type_ids"]
        if self.encoder_decoder:
            from ...models.families import shift_tokens_right

            kw["decoder_input_ids"] = shift_tokens_right(batch["input_ids"], self.builder.pad_id, decoder_start_id(self.cfg, self.tok))
            kw["decoder_attention_mask"] = batch["attention_mask"]
        return model(**kw).logits

    def loss(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean training loss of the batch: :meth:`loss_sum` over :meth:`loss_count`."""
        return self.loss_sum(model, batch) / max(self.loss_count(batch), 1)

    def loss_sum(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """0-d sum of the per-unit losses (examples, scored tokens), so a large batch split into
        micro-batches (accumulation, ranks) is normalised once, by the whole batch's count."""
        raise NotImplementedError

    def loss_count(self, batch: dict[str, torch.Tensor]) -> int:
        """Units :meth:`loss_sum` adds up, known without a forward: examples by default."""
        return int(batch["input_ids"].shape[0])

    # -- prediction and scoring
    def predict(self, model: Any, examples: Sequence[dict[str, Any]], feats: list[dict[str, Any]],
                batch_size: int, ctx: Callable[[], Any], progress: Any = None) -> list[Any]:
        """One prediction per example (label name, number, tag list, answer or text)."""
        raise NotImplementedError

    def plain(self, preds: list[Any]) -> list[Any]:
        """Predictions in the form :meth:`metrics` takes (e.g. labels without probabilities)."""
        return preds

    @classmethod
    def reference(cls, ex: dict[str, Any]) -> Any:
        """The gold answer of a labelled example, in the form :meth:`metrics` takes (a class method:
        baselines score examples without a model)."""
        raise NotImplementedError

    def score(self, preds: list[Any], examples: Sequence[dict[str, Any]]) -> dict[str, float]:
        """Metrics of predictions ``preds`` of ``examples`` (aligned).

        Raises:
            DataError: predictions and examples of different lengths, or no examples.
        """
        plain, refs = list(self.plain(preds)), [self.reference(e) for e in examples]
        if len(plain) != len(refs):
            raise DataError(f"{self.name} metrics: {len(plain)} predictions but {len(refs)} references")
        if not plain:
            raise DataError(f"{self.name} metrics: no examples to score")
        return {k: float(v) for k, v in self.metrics(plain, refs, self.spec.labels).items()}

    def describe(self, pred: Any, ex: dict[str, Any]) -> dict[str, Any]:
        """A JSON-able record of one prediction (of example ``ex``) for ``predict`` output."""
        return {"prediction": pred}

    def _run_batches(self, model: Any, feats: list[dict[str, Any]], batch_size: int, ctx: Callable[[], Any],
                     progress: Any = None):
        """Yield ``(indices, logits)`` over length-sorted batches in inference mode."""
        device = next(model.parameters()).device
        for idx in sorted_batches([len(f["input_ids"]) for f in feats], batch_size):
            batch = {k: v.to(device) for k, v in self.collate([feats[i] for i in idx]).items()}
            with ctx():
                out = self.logits(model, batch).float()
            if progress is not None:
                progress.update(len(idx))
            yield idx, out
