"""Typed settings of a fine-tuning run, the task description saved with the model, the result.

* :class:`FinetuneConfig` — everything ``finetune()`` needs (``transferlab finetune`` flags map
  onto its fields one to one); serialised as ``finetune_config.json`` in the output folder.
* :class:`TaskSpec` — what a fine-tuned folder needs to be evaluated or used for prediction on
  its own: task type, label list, columns, lengths, decoding settings (``task.json``).
* :class:`FinetuneResult` — what ``finetune()`` returns.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

# DType / Schedule: the one enums (config.py), still importable from here
from ..config import (COUNT, FRACTION, NONNEG, NONNEG_INT, POSITIVE, DType, Range, Schedule, check_fields, from_dict,
                      read_json, to_dict)
from ..errors import CheckpointError, ConfigError

TASK_FILE = "task.json"
CONFIG_FILE = "finetune_config.json"
TASK_FORMAT_VERSION = 1


#: which part of a too-long text a classifier reads
TRUNCATIONS = ("head", "tail", "head+tail")

@dataclass
class FinetuneConfig:
    """Settings of one fine-tuning run (``transferlab finetune --help`` shows the same)."""

    model: str = ""
    """Pre-trained model folder (ours or a converted transformers folder), ``builtin:minilm``,
    or a preset name (``bert-mini``, ``bart-mini``, ...) together with ``from_scratch``."""
    task: str | None = None
    """Built-in task (imdb, rotten-tomatoes, bbc-topic, twitter-ner, bbc-headlines) or derived
    task (bbc-pairs, bbc-qa). Alternatively give ``train_file``."""
    train_file: str | None = None
    """Training file: .csv/.tsv/.jsonl, or a CoNLL token<TAB>tag file for tagging."""
    validation_file: str | None = None
    """Validation file for early stopping; without it 10% of the training file is held out."""
    test_file: str | None = None
    """Test file, scored once with the best checkpoint when ``eval_on_test``."""
    text_column: str | None = None
    """Input text field (default per task type: text, source, context, tokens)."""
    pair_column: str | None = None
    """Second-sentence field for pair tasks (question for qa)."""
    label_column: str | None = None
    """Label field (default per task type: label, target, answer, tags)."""
    task_type: str | None = None
    """A registered task type (``finetune/task_types``: classification, pair-classification,
    regression, tagging, qa, seq2seq); inferred from the data when not given."""
    tokenizer: str | None = None
    """Tokenizer folder. Default: the model folder's own; for a preset with ``from_scratch`` a
    tokenizer is trained in-process on the task's training text (WordPiece for encoders,
    byte-level BPE for GPT/BART-style models, Unigram for T5-style models)."""
    tokenizer_vocab_size: int = 8000
    """Vocabulary size of a tokenizer trained in-process (from-scratch runs on a preset)."""
    from_scratch: bool = False
    """Re-initialise all weights: the no-pre-training control with the same architecture."""
    init_embeddings: str | None = field(default=None, metadata={"metavar": "PATH"})
    """Start the token embeddings from word2vec vectors (a word2vec model folder or a word2vec
    text file), matched by token string; the matched count is printed. Applied after loading
    (and after ``from_scratch``'s re-initialisation)."""
    train_size: int | None = None
    """Keep only N training examples (stratified by label, deterministic by ``seed``)."""
    validation_size: int | None = None
    """Score early stopping on at most N validation examples (deterministic subset)."""
    test_size: int | None = None
    """Report test metrics on at most N test examples (a fixed subset, the same for every seed)."""
    epochs: float = 3.0
    """Passes over the training set (a fraction stops part-way through the last one)."""
    batch_size: int = 16
    """Training examples (QA: windows) per micro-batch and process; an optimiser step sees
    batch_size x grad_accum x processes of them."""
    grad_accum: int = 1
    """Micro-batches accumulated per optimiser step. The loss is normalised over the whole
    accumulated (and distributed) batch, so 4 x 8 is the same step as one batch of 32 (exactly,
    up to float rounding, without dropout: dropout masks are drawn per micro-batch)."""
    eval_batch_size: int = 32
    """Batch size for evaluation and prediction."""
    lr: float = 5e-5
    """Peak learning rate (of the top layer when ``layer_lr_decay`` < 1)."""
    weight_decay: float = 0.01
    """AdamW weight decay on matrices (none on biases and norms)."""
    warmup: float = 0.1
    """Fraction of the run spent warming the learning rate up from 0."""
    schedule: Schedule = Schedule.LINEAR
    """Learning-rate schedule after warm-up: linear, cosine, slanted (ULMFiT) or constant."""
    layer_lr_decay: float = 1.0
    """Discriminative learning rates (ULMFiT): the head gets lr, the top block lr * decay, each
    block below one more factor, the embeddings lr * decay**(L + 1). 1.0 = one learning rate."""
    gradual_unfreeze: float = 0.0
    """ULMFiT gradual unfreezing: over this fraction of the run, unfreeze layer groups from the
    top (head, last block, ..., embeddings) one at a time; 0 = train everything from the start
    (``--gradual-unfreeze`` alone: 0.5)."""
    max_grad_norm: float = 1.0
    """Gradient clipping (0 = off)."""
    max_length: int | None = None
    """Longest input in tokens (default per task: 256 for imdb, 128 for tweets and sentence
    pairs; clipped to the model's position table)."""
    max_target_length: int | None = None
    """seq2seq: longest target / generated output in tokens (default 32 for bbc-headlines, else 64)."""
    doc_stride: int = 128
    """qa: overlap in tokens between consecutive windows of a long context."""
    max_answer_length: int = 30
    """qa: longest predicted answer in tokens."""
    pooling: str = "auto"
    """Sequence vector for classification: cls (pooler/first token), mean, last, auto (the
    family's choice: cls for encoders, last token for decoders and encoder-decoders, mean for
    elmo and word2vec), concat ([last, max, mean], ULMFiT)
    or ulmfit (concat pooling and ULMFiT's batch-norm/dropout/linear x2 head)."""
    truncation: str = "head"
    """Which tokens of a text longer than max_length a classifier reads: head (the first ones),
    tail (the last ones) or head+tail (the first quarter of the budget and the rest from the
    end; Sun et al., 2019, found head+tail best for long IMDb reviews). Single-text
    classification and regression only; pairs truncate the longer text first."""
    head_dropout: float | None = None
    """Dropout before the classifier (default: the model's dropout)."""
    dropout: float | None = None
    """Override the backbone's hidden dropout (embeddings, residual branches); None = the model's."""
    attention_dropout: float | None = None
    """Override the dropout on attention probabilities; None = the model's. On CPU, 0 lets
    SDPA use its fused kernel instead of materialising a random mask per attention matrix:
    a MiniLM step at 256 tokens runs about 1.85x faster."""
    prompt_suffix: str = "\nTL;DR:"
    """seq2seq on a decoder-only model: the prompt is the source followed by this text; the
    completion (the target) follows it, and only the completion is scored by the loss."""
    num_beams: int = 1
    """seq2seq: beam width when generating for evaluation (1 = greedy)."""
    bio_decoding: str = "viterbi"
    """tagging: viterbi (best tag path with no I-X after O or after another type) or argmax."""
    patience: int | None = None
    """Early stopping: stop after this many evaluations without improvement (None = never)."""
    eval_every: int = 0
    """Evaluate every N optimiser steps (0 = at the end of each epoch)."""
    max_minutes: float | None = None
    """Wall-clock budget for training; the schedule is stretched over it (cramming-style)."""
    seed: int = 0
    """Seed for initialisation of new weights, shuffling, dropout and subsampling."""
    dtype: DType = DType.AUTO
    """auto, bf16 (autocast), fp16 (autocast + GradScaler loss scaling) or fp32. ``auto`` is bf16 only
    where bf16 matmuls are native: on a CPU without avx512_bf16/AMX, bf16 is emulated and runs ~40x
    slower than fp32."""
    device: str = "auto"
    """cpu, cuda, cuda:N or auto (cuda when available)."""
    attn_impl: str | None = None
    """Override the attention kernel: sdpa or math (plain matmuls, faster for short bf16 CPU
    sequences); None keeps the model's."""
    save_every: int = 0
    """Also checkpoint every N optimiser steps (checkpoints are always written after each
    evaluation when ``out_dir`` is set); 0 = only then."""
    keep_last: int = 2
    """How many checkpoints to keep under ``out_dir/checkpoints``."""
    keep_checkpoints: bool = False
    """Keep ``out_dir/checkpoints`` in the finished folder (default: dropped with the final write)."""
    resume: bool = False
    """Continue from the latest checkpoint under ``out_dir/checkpoints`` (bit-identical to an
    uninterrupted run); a fresh start when there is none."""
    gradient_checkpointing: bool = False
    """Activation checkpointing: recompute each block in backward instead of keeping its
    activations (less memory, about one more forward per step)."""
    lora_r: int | None = None
    """LoRA: train rank-r updates of the block projections (and the head) instead of every
    weight; None = full fine-tuning. The saved folder holds the merged model and the adapter."""
    lora_alpha: float = 16.0
    """LoRA scale numerator (the update is multiplied by alpha / r)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA adapters' input."""
    lora_targets: list[str] = field(default_factory=lambda: ["qkv", "q", "kv", "out", "fc1", "fc2"])
    """Block linears that get an adapter: qkv (self-attention), q and kv (cross-attention), out, fc1, fc2."""
    fsdp: bool = False
    """Under torchrun: shard parameters, gradients and optimizer state (FSDP2) instead of DDP."""
    out_dir: str | None = None
    """Where the best checkpoint goes (model + tokenizer + task.json + metrics); None = keep in
    memory only."""
    force: bool = False
    """Replace ``out_dir`` even if it holds something other than an earlier fine-tune (another
    model, evaluation files, notes): see docs/outputs.md."""
    eval_on_test: bool = True
    """Score the test split with the best checkpoint at the end."""
    cost: dict[str, Any] = field(default_factory=dict)
    """Cost accounting settings (:class:`transferlab.cost.CostConfig` fields: country_iso_code,
    grid_intensity, price_per_hour, track_energy, ...); empty = defaults and environment."""
    quiet: bool = False
    """No progress bars or log lines."""

    #: allowed values of the numeric fields; ``finetune``'s flags are checked with the same ranges
    RANGES: ClassVar[dict[str, Range]] = {
        "tokenizer_vocab_size": COUNT, "train_size": COUNT, "validation_size": COUNT, "test_size": COUNT,
        "epochs": POSITIVE, "batch_size": COUNT, "eval_batch_size": COUNT, "lr": POSITIVE, "weight_decay": NONNEG,
        "warmup": FRACTION, "layer_lr_decay": Range(float, gt=0, le=1), "gradual_unfreeze": FRACTION,
        "max_grad_norm": NONNEG, "max_length": COUNT, "max_target_length": COUNT, "doc_stride": COUNT,
        "max_answer_length": COUNT, "head_dropout": FRACTION, "dropout": FRACTION, "attention_dropout": FRACTION,
        "num_beams": COUNT, "patience": COUNT, "eval_every": NONNEG_INT, "max_minutes": POSITIVE, "seed": NONNEG_INT,
    }

    def validate(self) -> "FinetuneConfig":
        """Check the settings; raise :class:`ConfigError` naming the field."""
        from ..config import _coerce_enums

        _coerce_enums(self)
        check_fields(self, "finetune", self.RANGES)
        if self.task_type is not None:
            from .task_types import TASK_TYPES  # late: the task types build on this module

            if str(self.task_type) not in TASK_TYPES:
                raise ConfigError(f"task_type: {self.task_type!r} is not one of: {', '.join(TASK_TYPES)}")
            self.task_type = str(self.task_type)
        if not self.model:
            raise ConfigError("finetune: model is required (a model folder, builtin:minilm, or a preset with from_scratch)")
        if self.task is None and self.train_file is None:
            raise ConfigError("finetune: give a task (--task NAME) or a training file (--train FILE)")
        if self.task is not None and self.train_file is not None:
            raise ConfigError("finetune: give either a task (--task) or a training file (--train), not both")
        if self.task is not None and (self.validation_file or self.test_file):
            raise ConfigError("finetune: --validation/--test files go with --train, not with a built-in --task")
        positive = ("batch_size", "grad_accum", "keep_last", "eval_batch_size", "tokenizer_vocab_size", "doc_stride", "max_answer_length", "num_beams")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"finetune.{name} must be positive, got {getattr(self, name)}")
        for name in ("train_size", "validation_size", "test_size", "max_length", "max_target_length", "patience"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise ConfigError(f"finetune.{name} must be positive (or unset), got {v}")
        if self.epochs <= 0:
            raise ConfigError(f"finetune.epochs must be positive, got {self.epochs}")
        if self.lr <= 0:
            raise ConfigError(f"finetune.lr must be positive, got {self.lr}")
        if not 0.0 <= self.warmup < 1.0:
            raise ConfigError(f"finetune.warmup must be in [0, 1), got {self.warmup}")
        if not 0.0 < self.layer_lr_decay <= 1.0:
            raise ConfigError(f"finetune.layer_lr_decay must be in (0, 1], got {self.layer_lr_decay}")
        if not 0.0 <= self.gradual_unfreeze < 1.0:
            raise ConfigError(f"finetune.gradual_unfreeze must be in [0, 1), got {self.gradual_unfreeze}")
        if self.pooling not in ("auto", "cls", "mean", "last", "concat", "ulmfit"):
            raise ConfigError(f"finetune.pooling must be auto, cls, mean, last, concat or ulmfit, got {self.pooling!r}")
        if self.truncation not in TRUNCATIONS:
            raise ConfigError(f"finetune.truncation must be {', '.join(TRUNCATIONS)}, got {self.truncation!r}")
        if self.bio_decoding not in ("viterbi", "argmax"):
            raise ConfigError(f"finetune.bio_decoding must be viterbi or argmax, got {self.bio_decoding!r}")
        for name in ("head_dropout", "dropout", "attention_dropout"):
            v = getattr(self, name)
            if v is not None and not 0.0 <= v < 1.0:
                raise ConfigError(f"finetune.{name} must be in [0, 1), got {v}")
        if self.attn_impl not in (None, "sdpa", "math"):
            raise ConfigError(f"finetune.attn_impl must be sdpa or math, got {self.attn_impl!r}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ConfigError(f"finetune.max_minutes must be positive, got {self.max_minutes}")
        if self.lora_r is not None:
            self.lora_config()
        if self.save_every < 0:
            raise ConfigError(f"finetune.save_every must be >= 0, got {self.save_every}")
        if self.eval_every < 0:
            raise ConfigError(f"finetune.eval_every must be >= 0, got {self.eval_every}")
        if not isinstance(self.cost, dict):
            raise ConfigError(f"finetune.cost must be a mapping of CostConfig settings, got {self.cost!r}")
        return self

    def lora_config(self) -> Any:
        """The :class:`~transferlab.finetune.lora.LoRAConfig` of the lora_* fields (validated)."""
        from .lora import LoRAConfig

        return LoRAConfig(r=self.lora_r, alpha=self.lora_alpha, dropout=self.lora_dropout,
                          target_modules=list(self.lora_targets)).validate()

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FinetuneConfig":
        return from_dict(cls, d).validate()

    def replace(self, **kw: Any) -> "FinetuneConfig":
        return dataclasses.replace(self, **kw).validate()


@dataclass
class TaskSpec:
    """Everything needed to use a fine-tuned folder on its own (saved as ``task.json``)."""

    task_type: str
    """A registered task type (:data:`~transferlab.finetune.task_types.TASK_TYPES`)."""
    labels: list[str] = field(default_factory=list)
    """Class names (index = logit), BIO tags, or [] (regression, qa, seq2seq)."""
    head: str = ""
    """Name of the head in the model (classification, token_classification, span, lm)."""
    task: str | None = None
    """Built-in task name, if any."""
    name: str = ""
    """Task name: the built-in name or the training file's stem."""
    columns: dict[str, str | None] = field(default_factory=dict)
    """Field names used for text / pair / label (user files)."""
    files: dict[str, str] = field(default_factory=dict)
    """Files the task was read from, by split."""
    max_length: int = 256
    """Input length limit in tokens."""
    max_target_length: int = 64
    """seq2seq: target / generation length limit."""
    doc_stride: int = 128
    """qa: window overlap."""
    max_query_length: int = 64
    """qa: questions are cut to this many tokens."""
    max_answer_length: int = 30
    """qa: longest answer in tokens."""
    pooling: str = "auto"
    """classification pooling."""
    truncation: str = "head"
    """classification: head, tail or head+tail (see FinetuneConfig.truncation)."""
    head_dropout: float | None = None
    """dropout before the classifier (None: the model's)."""
    label_mean: float = 0.0
    """regression: targets are standardised with the training mean ..."""
    label_std: float = 1.0
    """... and standard deviation; predictions are mapped back."""
    prompt_suffix: str = "\nTL;DR:"
    """seq2seq on decoders: text between source and completion."""
    num_beams: int = 1
    """seq2seq: beam width at prediction time."""
    bio_decoding: str = "viterbi"
    """tagging: viterbi or argmax."""
    derived: bool = False
    """True for the synthetic bbc-pairs / bbc-qa tasks."""
    format_version: int = TASK_FORMAT_VERSION
    """task.json layout version."""

    #: allowed values of the numeric fields of task.json
    RANGES: ClassVar[dict[str, Range]] = {
        "max_length": COUNT, "max_target_length": COUNT, "doc_stride": COUNT, "max_query_length": COUNT,
        "max_answer_length": COUNT, "head_dropout": FRACTION, "label_std": POSITIVE, "num_beams": COUNT,
        "format_version": COUNT,
    }

    def save(self, directory: str | Path) -> Path:
        from ..utils import atomic_write_text

        p = Path(directory) / TASK_FILE
        atomic_write_text(p, json.dumps(to_dict(self), indent=2) + "\n")
        return p

    @classmethod
    def load(cls, directory: str | Path) -> "TaskSpec":
        """Read ``task.json`` of a fine-tuned folder.

        Raises:
            CheckpointError: no task.json (not a fine-tuned folder) or a malformed one.
        """
        p = Path(directory) / TASK_FILE
        if not p.is_file():
            raise CheckpointError(
                f"{Path(directory)}: no {TASK_FILE}; evaluate/predict need a folder written by "
                "`transferlab finetune --out DIR`"
            )
        data = read_json(p, dict, TASK_FILE, CheckpointError)
        known = {f.name for f in fields(cls)}
        try:
            spec = cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as e:
            raise CheckpointError(f"{p}: {e}") from None
        try:
            check_fields(spec, "task", cls.RANGES)
        except ConfigError as e:
            raise CheckpointError(f"{p}: {e}") from None
        if not all(isinstance(v, str) or v is None for v in spec.columns.values()):
            raise CheckpointError(f"{p}: task.columns: expected field names (strings), got {spec.columns!r}")
        from .task_types import TASK_TYPES  # late: the task types build on this module

        if spec.task_type not in TASK_TYPES:
            raise CheckpointError(f"{p}: unknown task_type {spec.task_type!r}")
        if spec.format_version > TASK_FORMAT_VERSION:
            raise CheckpointError(f"{p}: format_version {spec.format_version} is newer than this transferlab understands")
        return spec


@dataclass
class FinetuneResult:
    """What :func:`~transferlab.finetune.finetune` returns."""

    validation: dict[str, float]
    """Metrics of the best checkpoint on the validation split."""
    test: dict[str, float]
    """Metrics of the best checkpoint on the test split ({} without a test split or eval_on_test)."""
    out_dir: Path | None
    """Folder holding the best checkpoint (None when out_dir was not set)."""
    train_seconds: float
    """Wall time of the training loop (evaluations included, loading and test scoring not)."""
    train_tokens: int
    """Non-padding tokens fed to the model in training (encoder + decoder)."""
    n_train: int
    """Training examples after subsampling."""
    best_epoch: int
    """1-based epoch of the best validation score."""
    history: list[dict[str, Any]]
    """One row per evaluation: epoch, step, train_loss, lr, seconds, validation metrics."""
    task_type: str = ""
    """The (possibly inferred) task type."""
    metric: str = ""
    """The validation metric used for model selection."""
    steps: int = 0
    """Optimiser steps taken."""
    stopped: str = ""
    """Why training ended: epochs, patience or time."""
    cost: dict[str, Any] = field(default_factory=dict)
    """Cost of the training loop (validation included, test scoring not): parameters, tokens,
    FLOPs, MFU, energy, CO2e, price; see ``docs/cost.md``."""

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["out_dir"] = str(self.out_dir) if self.out_dir is not None else None
        return d
