"""In-context learning: zero-, one- and few-shot classification with a decoder, no training.

The method (Brown et al. 2020, "Language Models are Few-Shot Learners"; scoring as in
EleutherAI's lm-evaluation-harness):

1. **Prompt.** A one-line task description, then ``k`` demonstrations, then the query, each
   rendered with the task's template and separated by a blank line::

       Each movie review below is labelled with its sentiment: negative or positive.

       Review: A tedious, overlong mess ...
       Sentiment: negative

       Review: <the test text>
       Sentiment:

   Texts are cleaned (``<br />`` tags and newlines become spaces, whitespace is collapsed) and
   optionally clipped to ``max_text_words`` words each.
2. **Demonstrations.** For test example ``i`` a seeded generator (``seed``, ``i``) draws
   ``max(shots)`` distinct training examples once; a ``k``-shot prompt uses the first ``k`` of
   them, so the 8-shot prompt extends the 4-shot one (paired, lower-variance comparisons
   between ``k``). The test examples (``n_test``, drawn with ``seed``) are the same for every
   ``k``.
3. **Scoring.** Every label is verbalised as a word (its name: ``positive``) and scored as the
   continuation ``" positive"`` of the prompt: the *sum* of the log-probabilities of its tokens
   given the prompt. The prediction is the label with the highest score (no length
   normalisation, no calibration). Prompts and labels are tokenized separately and
   concatenated, so every label is scored on the same token boundary.
4. **Left truncation.** A prompt longer than the context (``max_length`` tokens including the
   label) loses its *oldest* tokens: the task description and the first demonstrations go
   first; the query and the label cue always survive. The fraction of truncated prompts is
   reported. ``max_length`` defaults to the window the model was pre-trained with when the run
   directory says so (``<run>/config.json`` -> ``train.seq_len``; positions beyond it were never
   trained), else to ``max_positions``.
5. **Baseline.** Next to each accuracy: the majority-class rate, i.e. the accuracy of always
   predicting the most frequent training label, on the same test examples.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import ConfigError, DataError

__all__ = ["Template", "TEMPLATES", "ICLResult", "build_prompt", "score_continuations", "evaluate_icl",
           "trained_context"]


@dataclass(frozen=True)
class Template:
    """How one task is written as text."""

    description: str  #: first line; ``{labels}`` becomes "a, b or c"
    text_prefix: str = "Text: "  #: before each text
    label_prefix: str = "Label:"  #: the cue after which the label is predicted
    separator: str = "\n\n"  #: between description and examples


TEMPLATES: dict[str, Template] = {
    "imdb": Template("Each movie review below is labelled with its sentiment: {labels}.", "Review: ", "Sentiment:"),
    "rotten-tomatoes": Template("Each movie review below is labelled with its sentiment: {labels}.", "Review: ",
                                "Sentiment:"),
    "bbc-topic": Template("Each news article below is labelled with its topic: {labels}.", "Article: ", "Topic:"),
}
DEFAULT_TEMPLATE = Template("Each text below is labelled with one of: {labels}.")

_TAGS = re.compile(r"<br\s*/?>|<[^>]{1,20}>", re.IGNORECASE)
_SPACE = re.compile(r"\s+")


def clean_text(text: str, max_words: int | None = None) -> str:
    """One line of text: HTML line breaks and newlines become spaces; optionally clipped."""
    words = _SPACE.sub(" ", _TAGS.sub(" ", text)).strip().split(" ")
    if max_words:
        words = words[:max_words]
    return " ".join(words)


def _join_labels(labels: Sequence[str]) -> str:
    return labels[0] if len(labels) == 1 else ", ".join(labels[:-1]) + " or " + labels[-1]


def build_prompt(template: Template, labels: Sequence[str], demos: Sequence[tuple[str, str]], query: str) -> str:
    """The prompt text up to (and including) the label cue of the query.

    Args:
        template: the task's :class:`Template`.
        labels: verbalised label words, for the description.
        demos: ``(text, label word)`` demonstrations, already cleaned.
        query: the cleaned test text.

    Returns:
        ``description + blank line + demonstrations + query + label cue`` (no trailing space:
        the label is scored as ``" " + word``).
    """
    parts = [template.description.format(labels=_join_labels(labels))]
    parts += [f"{template.text_prefix}{t}\n{template.label_prefix} {lab}" for t, lab in demos]
    parts.append(f"{template.text_prefix}{query}\n{template.label_prefix}")
    return template.separator.join(parts)


# ---------------------------------------------------------------------------------- scoring
def score_continuations(
    model: torch.nn.Module,
    context_ids: Sequence[Sequence[int]],
    continuation_ids: Sequence[Sequence[int]],
    max_length: int,
    batch_size: int = 8,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Sum of log p(continuation tokens | context) for many (context, continuation) pairs.

    Pairs are sorted by length and batched with right padding; only continuation positions go
    through the LM head. A pair longer than ``max_length`` loses tokens from the left of its
    context.

    Args:
        model: a decoder TransferModel with an ``lm`` head.
        context_ids: token ids of each context.
        continuation_ids: token ids of each continuation (non-empty, shorter than max_length).
        max_length: most tokens the model sees at once (context + continuation).
        batch_size: pairs per forward pass.
        progress: show a tqdm bar.

    Returns:
        (scores (N,) float64, truncated (N,) bool).
    """
    from ..generation import token_logprobs

    n = len(context_ids)
    if len(continuation_ids) != n:
        raise ConfigError(f"score_continuations: {n} contexts but {len(continuation_ids)} continuations")
    seqs, starts, truncated = [], [], np.zeros(n, dtype=bool)
    for i, (ctx, cont) in enumerate(zip(context_ids, continuation_ids)):
        cont = list(cont)
        if not cont or len(cont) >= max_length:
            raise ConfigError(f"score_continuations: continuation {i} has {len(cont)} tokens; "
                              f"need 1..{max_length - 1} (max_length={max_length})")
        ctx = list(ctx)
        room = max_length - len(cont)
        if len(ctx) > room:  # left truncation: keep the most recent context tokens
            ctx, truncated[i] = ctx[len(ctx) - room:], True
        if not ctx:
            raise ConfigError(f"score_continuations: context {i} is empty (need at least one token to condition on)")
        seqs.append(ctx + cont)
        starts.append(len(ctx))
    order = sorted(range(n), key=lambda i: len(seqs[i]))
    scores = np.zeros(n, dtype=np.float64)
    device = next(model.parameters()).device
    batches = [order[i: i + batch_size] for i in range(0, n, batch_size)]
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc="scoring", unit="batch", leave=False)
    for idx in batches:
        L = max(len(seqs[i]) for i in idx)
        ids = torch.zeros(len(idx), L, dtype=torch.long)
        mask = torch.zeros(len(idx), L, dtype=torch.long)
        target = torch.zeros(len(idx), L, dtype=torch.bool)
        for r, i in enumerate(idx):
            s = seqs[i]
            ids[r, : len(s)] = torch.tensor(s)
            mask[r, : len(s)] = 1
            target[r, starts[i]: len(s)] = True  # the continuation tokens
        lp = token_logprobs(model, ids.to(device), mask.to(device), target_mask=target.to(device))  # (b, L)
        scores[idx] = lp.sum(-1).double().cpu().numpy()
    return scores, truncated


# ---------------------------------------------------------------------------------- evaluation
@dataclass
class ICLResult:
    """Accuracy per number of shots, with the majority-class rate and the settings used."""

    task: str
    rows: list[dict[str, Any]]
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "settings": self.settings, "results": self.rows}

    def table(self) -> str:
        """A plain-text table, one line per ``k``."""
        s = self.settings
        head = (f"in-context {self.task} ({s.get('split')}, n={s.get('n_test')}, seed {s.get('seed')}, "
                f"max_length {s.get('max_length')}): sum of label-token log-probs")
        lines = [head, f"{'shots':>5}  {'accuracy':>8}  {'majority':>8}  {'truncated':>9}  {'prompt tokens':>13}  predicted"]
        for r in self.rows:
            pred = ", ".join(f"{k} {v:.0%}" for k, v in r["predicted"].items())
            lines.append(f"{r['shots']:>5}  {r['accuracy']:>8.3f}  {r['majority_rate']:>8.3f}  "
                         f"{r['truncated']:>9.0%}  {r['mean_prompt_tokens']:>13.0f}  {pred}")
        return "\n".join(lines)


def trained_context(model_dir: str | Path) -> int | None:
    """The window a model was pre-trained with, if its run directory records it.

    ``transferlab pretrain --out RUN`` saves the model in ``RUN/model`` and the resolved settings
    in ``RUN/config.json``; this reads ``train.seq_len`` from there (``None`` when absent).
    """
    cfg = Path(model_dir).resolve().parent / "config.json"
    try:
        raw = json.loads(cfg.read_text(encoding="utf-8"))
        n = raw["train"]["seq_len"] if "model" in raw else None
        return int(n) if n else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def evaluate_icl(
    model: torch.nn.Module,
    tokenizer: Any,
    task: Any = "imdb",
    shots: Sequence[int] = (0, 1, 4, 8),
    n_test: int = 200,
    seed: int = 0,
    split: str = "test",
    max_length: int | None = None,
    max_text_words: int | None = None,
    batch_size: int = 8,
    template: Template | None = None,
    progress: bool = False,
) -> ICLResult:
    """Zero/one/few-shot accuracy of a decoder on a classification task (see the module docstring).

    Args:
        model: a decoder TransferModel with an ``lm`` head.
        tokenizer: the model's tokenizer (``encode``).
        task: a built-in task name (``imdb``, ``rotten-tomatoes``, ``bbc-topic``) or a
            :class:`~transferlab.data.builtin.TaskSplits`-like object with ``name``, ``task_type``,
            ``labels``, ``train`` and the evaluation split (lists of ``{"text", "label"}``).
        shots: numbers of demonstrations to evaluate.
        n_test: test examples (drawn with ``seed``; all of them if the split is smaller).
        seed: seeds the test sample and the demonstrations.
        split: evaluation split (``test`` or ``validation``).
        max_length: context in tokens (prompt + label); default: see :func:`trained_context`
            (given by the caller) else the model's ``max_positions``.
        max_text_words: clip every text (demonstrations and query) to this many words.
        batch_size: (prompt, label) pairs per forward pass.
        template: override the task's prompt template.
        progress: show progress bars.

    Returns:
        :class:`ICLResult` (``.table()``, ``.to_dict()``).

    Raises:
        ConfigError: not a decoder, a non-classification task, bad shots/n_test/max_length.
        DataError: unknown task, or a split too small for the requested shots.
    """
    cfg = model.config
    if not cfg.is_causal:
        raise ConfigError(f"in-context evaluation needs a decoder (GPT-style) model; this one is family={cfg.family}")
    if isinstance(task, str):
        from ..data.builtin import load_task

        task = load_task(task)
    from ..finetune.task_types import get_task_type  # late: evaluation sits below finetune

    tt = get_task_type(task.task_type)
    if not (tt.has_classes and tuple(tt.input_fields) == ("text",)):  # a prompt verbalises one text, one label
        raise ConfigError(f"in-context evaluation needs a classification task; {task.name} is {task.task_type}")
    shots = sorted({int(k) for k in shots})
    if not shots or shots[0] < 0:
        raise ConfigError(f"shots must be integers >= 0, got {shots}")
    if n_test < 1:
        raise ConfigError(f"n_test must be >= 1, got {n_test}")
    if split not in ("test", "validation"):
        raise ConfigError(f"split must be test or validation, got {split!r}")
    train, evals = list(task.train), list(task[split])
    if not evals:
        raise DataError(f"task {task.name}: the {split} split is empty")
    if shots[-1] > len(train):
        raise DataError(f"task {task.name}: {shots[-1]} shots need that many training examples; it has {len(train)}")
    max_pos = cfg.max_positions
    max_length = int(max_length or max_pos)
    if not 2 <= max_length <= max_pos:
        raise ConfigError(f"max_length must be in [2, {max_pos}] (the model's max_positions), got {max_length}")
    labels = list(task.labels)
    tpl = template or TEMPLATES.get(task.name, DEFAULT_TEMPLATE)

    rng = np.random.default_rng(seed)
    test_idx = rng.permutation(len(evals))[: min(n_test, len(evals))]
    test = [evals[i] for i in test_idx]
    gold = np.array([labels.index(ex["label"]) for ex in test])
    counts = np.bincount([labels.index(ex["label"]) for ex in train], minlength=len(labels))
    majority = int(counts.argmax())
    majority_rate = float((gold == majority).mean())

    # nested demonstrations: one draw of max(shots) per test example, k-shot uses the first k
    kmax = shots[-1]
    demo_idx = [np.random.default_rng([seed, int(i)]).choice(len(train), size=kmax, replace=False) for i in test_idx]
    clean = lambda t: clean_text(t, max_text_words)  # noqa: E731
    queries = [clean(ex["text"]) for ex in test]
    demo_cache: dict[int, tuple[str, str]] = {}

    def demo(j: int) -> tuple[str, str]:
        if j not in demo_cache:
            demo_cache[j] = (clean(train[j]["text"]), train[j]["label"])
        return demo_cache[j]

    label_ids = [tokenizer.encode(" " + lab) for lab in labels]
    if any(len(ids) == 0 for ids in label_ids):
        raise DataError(f"task {task.name}: a label encodes to no tokens: {labels}")
    rows = []
    for k in shots:
        prompts = [build_prompt(tpl, labels, [demo(int(j)) for j in demo_idx[i][:k]], queries[i])
                   for i in range(len(test))]
        ctx_ids = [tokenizer.encode(p) for p in prompts]
        pairs_ctx = [c for c in ctx_ids for _ in labels]
        pairs_cont = [label_ids[c] for _ in ctx_ids for c in range(len(labels))]
        scores, trunc = score_continuations(model, pairs_ctx, pairs_cont, max_length, batch_size, progress)
        scores = scores.reshape(len(test), len(labels))
        pred = scores.argmax(1)
        rows.append({
            "shots": k,
            "accuracy": float((pred == gold).mean()),
            "n": int(len(test)),
            "majority_class": labels[majority],
            "majority_rate": majority_rate,
            "chance": 1.0 / len(labels),
            "truncated": float(trunc.reshape(len(test), len(labels)).any(1).mean()),
            "mean_prompt_tokens": float(np.mean([len(c) for c in ctx_ids])),
            "predicted": {lab: float((pred == c).mean()) for c, lab in enumerate(labels)},
        })
    settings = {"split": split, "n_test": int(len(test)), "seed": seed, "shots": shots, "max_length": max_length,
                "max_text_words": max_text_words, "template": tpl.__dict__, "scoring": "sum of label-token log-probs",
                "truncation": "left (oldest prompt tokens dropped)"}
    return ICLResult(task.name, rows, settings)
