"""Typed training configuration shared by pre-training (and reusable by fine-tuning).

Every field has a docstring; ``transferlab pretrain --help`` lists them, and dotted overrides
(``train.lr=1e-3``) reach them through :func:`transferlab.config.apply_overrides`. Budgets are
first-class (Cramming): a run stops at whichever of ``max_steps``, ``max_tokens`` and
``max_minutes`` comes first, and the learning-rate schedule follows the same notion of progress.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from ..config import (COUNT, FRACTION, NONNEG, NONNEG_INT, POSITIVE, UNIT, DType, Range, Schedule, _coerce_enums,
                      check_fields, from_dict, to_dict)
from ..errors import ConfigError

__all__ = ["TrainConfig", "Schedule", "DType", "PRETRAIN_SCHEDULES", "PRETRAIN_DTYPES"]

#: the shared enums' members pre-training supports (slanted is fine-tuning's ULMFiT schedule;
#: fp16 needs loss scaling, which the pre-training loop does not do)
PRETRAIN_SCHEDULES = (Schedule.LINEAR, Schedule.COSINE, Schedule.CONSTANT)
PRETRAIN_DTYPES = (DType.AUTO, DType.BF16, DType.FP32)


@dataclass
class TrainConfig:
    """How to train: batch geometry, optimiser, schedule, budgets, evaluation, checkpoints."""

    batch_size: int = 32
    """Examples per micro-batch on each process (the global batch is batch_size x grad_accum x world size)."""
    seq_len: int = 128
    """Tokens per example window (including special tokens the objective adds)."""
    grad_accum: int = 1
    """Micro-batches accumulated per optimizer step. The loss is normalised over the whole
    accumulated (and distributed) batch and every objective draws its masks and noise per example
    (keyed by seed and position in the data stream; mtlm's attention mode per step), so 4 x 8 is
    the same step as 32, as are 2 processes x 16, up to float rounding; dropout masks are drawn
    per micro-batch."""
    lr: float = 5e-4
    """Peak learning rate (reached at the end of warmup)."""
    weight_decay: float = 0.01
    """AdamW decoupled weight decay, applied to matrices only (never to biases, norms or 1-D tensors)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    """AdamW (beta1, beta2); 0.98 as in RoBERTa/Cramming is more stable than 0.999 for short runs."""
    eps: float = 1e-8
    """AdamW epsilon."""
    warmup: float = 0.06
    """Fraction of the budget spent warming up linearly from 0 (a fraction, so it also works for max_minutes)."""
    schedule: Schedule = Schedule.LINEAR
    """Decay after warmup: linear, cosine or constant."""
    min_lr_ratio: float = 0.0
    """Final learning rate as a fraction of lr (e.g. 0.1 for cosine as in GPT-3)."""
    clip: float = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping."""
    max_steps: int = 0
    """Stop after this many optimizer steps (0: no step limit)."""
    max_tokens: int = 0
    """Stop after this many input tokens over all processes (0: no token limit)."""
    max_minutes: float = 0.0
    """Stop after this much training wall-clock time, summed over resumes (0: no time limit)."""
    eval_every: int = 200
    """Validation loss/perplexity every this many steps (0: only at the end)."""
    eval_batches: int = 20
    """Validation micro-batches per process; always the same fixed windows and masks."""
    save_every: int = 500
    """Checkpoint every this many steps (0: only at the end). A checkpoint is always written at the end."""
    keep_last: int = 2
    """Checkpoints kept on disk (older ones are removed after a newer one is complete)."""
    log_every: int = 10
    """Append a line to metrics.jsonl and TensorBoard every this many steps."""
    dtype: DType = DType.AUTO
    """Compute precision: auto, bf16 (autocast; fp32 weights and optimizer) or fp32."""
    seed: int = 0
    """Seeds model initialisation, data order, masking and dropout."""
    init_embeddings: str | None = None
    """Start the token embeddings from word2vec vectors (a word2vec model folder or a word2vec
    text file), matched by token string; the matched count is printed (docs/models.md)."""
    compile: bool = False
    """torch.compile the model's backbone (first step slower; faster steps afterwards)."""
    num_workers: int = 0
    """0: collate in the training loop; 1: collate the next batches in one background thread."""
    num_threads: int = 0
    """torch intra-op threads per process (0: torch's default). Results are bit-reproducible for a fixed value."""
    fsdp: bool = False
    """Under torchrun, shard parameters, gradients and optimizer state (FSDP2) instead of replicating (DDP)."""
    gradient_checkpointing: bool = False
    """Activation checkpointing: keep only each block's input and recompute the block in backward
    (torch.utils.checkpoint); less activation memory for about one more forward per step, same gradients."""
    deterministic: bool = False
    """torch.use_deterministic_algorithms(True) (slower on GPU; CPU kernels are deterministic already)."""
    progress: bool = True
    """Show a tqdm progress bar with tokens/s on the main process."""
    tensorboard: bool = True
    """Write TensorBoard event files under <out>/tensorboard."""

    # data: how examples are drawn from the prepared shards
    language_alpha: float | None = None
    """Temperature sampling of languages (XLM): draw language l with q_l = p_l^alpha / sum_k p_k^alpha, p_l
    its share of the train tokens (1.0: as the data holds them; 0.3: small languages up-sampled); None:
    the plain shuffled order. Needs data prepared with languages (prepare --language, builtin:multilingual)."""

    # fields that only affect logging/saving, never the numbers: a resumed run may change them
    RESUME_SAFE = ("eval_every", "eval_batches", "save_every", "keep_last", "log_every", "num_workers",
                   "gradient_checkpointing",
                   "progress", "tensorboard")

    #: allowed values of the numeric fields; ``pretrain``'s flags are checked with the same ranges
    RANGES: ClassVar[dict[str, Range]] = {
        "batch_size": COUNT, "seq_len": COUNT, "grad_accum": COUNT, "lr": POSITIVE, "weight_decay": NONNEG,
        "eps": POSITIVE, "warmup": FRACTION, "min_lr_ratio": UNIT, "clip": NONNEG, "max_steps": NONNEG_INT,
        "max_tokens": NONNEG_INT, "max_minutes": NONNEG, "eval_every": NONNEG_INT, "eval_batches": NONNEG_INT,
        "save_every": NONNEG_INT, "keep_last": COUNT, "log_every": NONNEG_INT, "seed": NONNEG_INT,
        "num_workers": Range(int, ge=0, le=1), "num_threads": NONNEG_INT,
        "language_alpha": POSITIVE,
    }

    def validate(self) -> "TrainConfig":
        """Check types, ranges and choices; raise :class:`ConfigError` naming the field."""
        _coerce_enums(self)
        check_fields(self, "train", self.RANGES)
        for name, allowed in (("schedule", PRETRAIN_SCHEDULES), ("dtype", PRETRAIN_DTYPES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"train.{name}={getattr(self, name).value}: pre-training supports "
                                  f"{', '.join(a.value for a in allowed)}")
        for name in ("batch_size", "seq_len", "grad_accum"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"train.{name} must be positive, got {getattr(self, name)}")
        for name in ("max_steps", "max_tokens", "max_minutes", "eval_every", "eval_batches", "save_every",
                     "log_every", "num_threads", "weight_decay", "clip", "min_lr_ratio", "keep_last"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be positive, got {self.lr}")
        if not (isinstance(self.betas, (list, tuple)) and len(self.betas) == 2
                and all(0.0 <= float(b) < 1.0 for b in self.betas)):
            raise ConfigError(f"train.betas must be two numbers in [0, 1), e.g. [0.9, 0.98], got {self.betas!r}")
        self.betas = [float(b) for b in self.betas]
        if not 0.0 <= self.warmup < 1.0:
            raise ConfigError(f"train.warmup is a fraction of the budget in [0, 1), got {self.warmup}")
        if self.num_workers not in (0, 1):
            raise ConfigError(f"train.num_workers must be 0 or 1 (one collation thread), got {self.num_workers}")
        if self.keep_last < 1:
            raise ConfigError(f"train.keep_last must be at least 1, got {self.keep_last}")
        return self

    def require_budget(self) -> None:
        """A run needs at least one of max_steps, max_tokens, max_minutes."""
        if not (self.max_steps or self.max_tokens or self.max_minutes):
            raise ConfigError("no training budget: set --max-steps, --max-tokens or --max-minutes "
                              "(train.max_steps / train.max_tokens / train.max_minutes)")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        return from_dict(cls, d, where="train").validate()

    @classmethod
    def field_docs(cls) -> dict[str, str]:
        """Field name -> its docstring (for --help)."""
        import ast
        import inspect
        import textwrap

        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
        docs: dict[str, str] = {}
        body = tree.body[0].body  # type: ignore[attr-defined]
        for a, b in zip(body, body[1:]):
            if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant):
                docs[a.target.id] = " ".join(str(b.value.value).split())  # type: ignore[attr-defined]
        return {f.name: docs.get(f.name, "") for f in fields(cls)}
