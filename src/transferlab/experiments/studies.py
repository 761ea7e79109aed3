"""The studies: the lecture's tables as declarative entries, their shared setting and plan.

A *study* is a declarative entry of :data:`STUDIES`: its rows (what is pre-trained, with which
objective and which model change), its columns (fine-tuning tasks, LM perplexity) and, for a
learning curve, its train sizes. Adding a study is adding one entry.

Every row of a study shares one :class:`Setting`: the same corpus sample, the same tokenizer
(per tokenizer kind: byte-level BPE for every row, a unigram vocabulary of the same size for T5
span corruption, which needs sentinels), the same pre-training budget (steps with ``--quick``,
minutes otherwise), the same fine-tuning recipe, train size and seeds. Each row is pre-trained
once per seed, so the seed spread covers pre-training and fine-tuning.

:class:`StudyPlan` turns a study and its setting into comparisons (one per task column);
:mod:`.study` runs them and :mod:`.report` renders them (both read this module, which imports
neither).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError

STUDY_FILE = "study.json"
LM_TASK = "lm"  #: the task name of pre-training rows in results.jsonl
PAIR_TASK = "bbc-pairs"  #: the pair task the study builds from BBC articles (no built-in task has pairs)


@functools.lru_cache(maxsize=None)
def task_type_of(task: str) -> str:
    """The fine-tuning task type of a study task column.

    Args:
        task: a built-in task name or :data:`PAIR_TASK`.

    Returns:
        The built-in task's own ``task_type`` (read from its definition in ``data/builtin.py``),
        or pair-classification for the study-made pair task.

    Raises:
        ConfigError: a task that is neither.
    """
    if task == PAIR_TASK:
        from ..finetune.task_types import PairClassification

        return PairClassification.name
    from ..data.builtin import load_task

    if task not in TASK_TYPES:
        raise ConfigError(f"unknown study task {task!r}; studies use {', '.join(TASK_TYPES)}")
    return load_task(task).task_type  # the splits are cached: a study reads them anyway


class _StudyTaskTypes(Mapping[str, str]):
    """task -> fine-tuning task type of every task a study can use (built-in tasks and the
    study-made pair task), looked up when asked so that no table repeats the task definitions."""

    def __getitem__(self, task: str) -> str:
        if task not in self:
            raise KeyError(task)
        return task_type_of(task)  # loads a built-in task's splits once (cached)

    def __contains__(self, task: object) -> bool:
        return task in self._names()

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    @staticmethod
    def _names() -> list[str]:
        from ..data.builtin import list_tasks

        return [*list_tasks(), PAIR_TASK]


#: task -> fine-tuning task type (built-in tasks and the study-made pair task)
TASK_TYPES: Mapping[str, str] = _StudyTaskTypes()


# ------------------------------------------------------------------------------ definitions
@dataclass
class Row:
    """One row of a study's table."""

    name: str  #: the row label, as the paper writes it
    preset: str | None = None  #: the architecture (a model preset); None for a baseline
    objective: str | None = None  #: pre-training objective; None: not pre-trained
    settings: dict[str, Any] = field(default_factory=dict)  #: objective settings
    model: dict[str, Any] = field(default_factory=dict)  #: model.* overrides: the ablated change
    baseline: str | None = None  #: tfidf-logreg, ... (no model)
    scratch: bool = False  #: the same architecture fine-tuned from random weights
    tokenizer: str = "bpe"  #: tokenizer kind of the shared vocabulary this row uses
    cols: dict[str, str] = field(default_factory=dict)  #: descriptive columns (#L, #H, #A)

    @property
    def family(self) -> str:
        from ..config import get_preset

        return "" if self.preset is None else str(get_preset(self.preset).family)

    @property
    def group(self) -> str:
        if self.baseline:
            return "tf-idf" if self.baseline.startswith("tfidf") else self.baseline
        return "from scratch" if self.scratch else "pre-trained"

    def fits(self, task_type: str) -> bool:
        """Whether this row's baseline applies to ``task_type``, or its model family can be
        fine-tuned on it (the task type's ``baselines`` and ``check_model`` decide)."""
        from ..config import get_preset
        from ..finetune.task_types import get_task_type

        tt = get_task_type(task_type)
        if self.baseline:
            return self.baseline in tt.baselines
        if self.preset is None:
            return True
        try:
            tt.check_model(get_preset(self.preset))
        except ConfigError:
            return False
        return True


@dataclass
class Study:
    """One table (or curve) of the lecture as a declarative entry."""

    name: str
    title: str
    paper: str  #: whose table this is
    rows: list[Row]
    tasks: list[str]  #: task columns
    lm_ppl: bool = True  #: a validation-perplexity column from pre-training
    layout: str = "table"  #: table: rows x tasks; curve: rows x train sizes
    train_sizes: list[int] | None = None  #: curve layout: labelled examples per column
    quick_train_sizes: list[int] | None = None
    vanilla: str | None = None  #: the row every other row is compared against (helps beyond noise)
    quick_rows: list[Row] | None = None  #: smaller rows for --quick (bert-size shrinks its grid)
    budget_minutes: float = 4.0  #: minutes of pre-training per row and seed at full scale
    seeds: int = 3  #: seeds at full scale (a 13-row table with 3 seeds does not fit an hour on 2 cores)
    notes: str = ""

    def rows_for(self, quick: bool) -> list[Row]:
        return list(self.quick_rows if quick and self.quick_rows else self.rows)


def _bert(L: int, H: int, A: int) -> Row:
    return Row(f"L={L} H={H} A={A}", "bert-tiny", "mlm",
               model={"n_layers": L, "d_model": H, "n_heads": A, "d_ff": 4 * H},
               cols={"#L": str(L), "#H": str(H), "#A": str(A)})


_CLS, _TAG, _GEN = "rotten-tomatoes", "twitter-ner", "bbc-headlines"
_ENC, _DEC, _S2S = "bert-tiny", "gpt-mini", "bart-mini"
_MLM = dict(preset=_ENC, objective="mlm")

STUDIES: dict[str, Study] = {s.name: s for s in [
    Study("bert-size", "Ablation over BERT model size", "Devlin et al. (2019), Table 6",
          [_bert(2, 128, 2), _bert(4, 128, 2), _bert(2, 256, 4), _bert(4, 256, 4), _bert(6, 256, 4),
           _bert(4, 512, 8)],
          ["rotten-tomatoes", "bbc-topic", "twitter-ner"],
          quick_rows=[_bert(1, 32, 2), _bert(2, 32, 2), _bert(1, 64, 4)], budget_minutes=6.0, seeds=1,
          notes="BERT's columns are LM ppl (held-out MLM perplexity) and three GLUE dev sets; here the "
                "MLM validation perplexity of the shared corpus and three built-in dev sets."),
    Study("objectives", "Comparison of pre-training objectives", "Lewis et al. (2020, BART), Table 1",
          [Row("Language Model", _DEC, "clm"),
           Row("Permuted Language Model", _ENC, "plm"),
           Row("Masked Language Model", _ENC, "mlm"),
           Row("Multitask Masked Language Model", _ENC, "mtlm"),
           Row("Masked Seq2seq", _S2S, "mass"),
           Row("BART w/ Token Masking", _S2S, "denoise", {"noise": ["mask"]}),
           Row("BART w/ Token Deletion", _S2S, "denoise", {"noise": ["delete"]}),
           Row("BART w/ Text Infilling", _S2S, "denoise", {"noise": ["infill"]}),
           Row("BART w/ Document Rotation", _S2S, "denoise", {"noise": ["rotate"]}),
           Row("BART w/ Sentence Shuffling", _S2S, "denoise", {"noise": ["permute"]}),
           Row("BART w/ Text Infilling + Sentence Shuffling", _S2S, "denoise", {"noise": ["infill", "permute"]}),
           Row("ELECTRA (replaced token detection)", _ENC, "electra"),
           Row("T5 span corruption", "t5-mini", "span-corruption", tokenizer="unigram")],
          [_CLS, _TAG, _GEN], budget_minutes=2.0, seeds=1,
          notes="Each objective on the family it needs (encoder, decoder or encoder-decoder of the same width "
                "and depth); an encoder cannot generate, so its headline cell is n/a. LM ppl is each "
                "objective's own validation perplexity (of its own targets), so it compares rows of one "
                "objective, not objectives; BART's PPL column is measured after fine-tuning on ELI5."),
    Study("nsp", "Effect of the next-sentence-prediction task", "Devlin et al. (2019), Table 5",
          [Row("No NSP (MLM)", **_MLM), Row("BERT (MLM + NSP)", _ENC, "nsp")],
          [PAIR_TASK, _CLS], budget_minutes=5.0,
          notes=f"{PAIR_TASK}: does sentence B follow sentence A in the same BBC article (a pair task built "
                "from bbc-topic's splits); rotten-tomatoes is the single-sentence task."),
    Study("modifications", "Do transformer modifications transfer?", "Narang et al. (2021), Table 1",
          [Row("Vanilla Transformer", **_MLM),
           Row("GeLU -> ReLU", **_MLM, model={"activation": "relu"}),
           Row("SwiGLU", **_MLM, model={"activation": "swiglu"}),
           Row("GeGLU", **_MLM, model={"activation": "geglu"}),
           Row("RMS Norm", **_MLM, model={"norm": "rmsnorm"}),
           Row("Pre-norm (norm position)", **_MLM, model={"prenorm": True, "final_norm": True}),
           Row("Sinusoidal positions", **_MLM, model={"position": "sinusoidal"}),
           Row("Rotary positions", **_MLM, model={"position": "rotary"}),
           Row("Untied embeddings", **_MLM, model={"tie_embeddings": False}),
           Row("Dropout 0.1 in pre-training", **_MLM, model={"dropout": 0.1, "attention_dropout": 0.1})],
          [_CLS, "bbc-topic", _TAG], vanilla="Vanilla Transformer", budget_minutes=3.0,
          notes="A modification *helps* on a task when its mean is ahead of the vanilla row's by more than "
                "the sum of both seed standard deviations; Narang et al. found most do not transfer."),
    Study("ulmfit-curve", "Accuracy vs number of labelled examples", "Howard & Ruder (2018), Figure 3",
          [Row("pre-trained", **_MLM), Row("from scratch", _ENC, scratch=True),
           Row("TF-IDF + logistic regression", baseline="tfidf-logreg")],
          ["imdb"], lm_ppl=False, layout="curve", train_sizes=[100, 300, 1000, 3000],
          quick_train_sizes=[32, 96], budget_minutes=8.0,
          notes="ULMFiT's figure plots validation error against training examples for IMDb; here test "
                "accuracy against labels for the same pre-trained and scratch architecture and TF-IDF."),
]}


def get_study(name: str) -> Study:
    """The study called ``name``.

    Args:
        name: a key of :data:`STUDIES` (``transferlab study --list``).

    Returns:
        Its :class:`Study`.

    Raises:
        ConfigError: an unknown name (the message lists the known ones).
    """
    if name not in STUDIES:
        raise ConfigError(f"unknown study {name!r}; known studies: {', '.join(STUDIES)} (see `transferlab study --list`)")
    return STUDIES[name]


# ------------------------------------------------------------------------------ the shared setting
@dataclass
class Setting:
    """What every row of a study shares (written to study.json; part of every cell's fingerprint)."""

    quick: bool = False
    vocab_size: int = 8000
    corpus_docs: int = 20000  #: the first N documents of builtin:reviews+news
    seq_len: int = 128
    batch_size: int = 32
    lr: float = 5e-4
    pretrain_minutes: float = 4.0  #: per row and seed (0: use pretrain_steps)
    pretrain_steps: int = 0
    base_model: dict[str, Any] = field(default_factory=dict)  #: model.* overrides before each row's own
    finetune: dict[str, Any] = field(default_factory=dict)
    train_size: int = 1000  #: labelled examples per task (table layout)
    train_sizes: list[int] = field(default_factory=list)  #: curve layout
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    tasks: list[str] = field(default_factory=list)
    cost: dict[str, Any] = field(default_factory=dict)  #: CostConfig fields of every run

    def fingerprint(self) -> str:
        """Everything that changes a row's numbers except the seed and the task list."""
        d = dataclasses.asdict(self)
        for k in ("seeds", "tasks", "train_sizes", "train_size"):
            d.pop(k)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]


def make_setting(study: Study, quick: bool = False, budget_minutes: float | None = None, seeds: int | None = None,
                 tasks: Sequence[str] | None = None) -> Setting:
    """The shared setting of ``study`` (``--quick``: tiny models, a few steps, tiny data).

    Args:
        study: the study.
        quick: the minutes-long version tests use.
        budget_minutes: pre-training minutes per row and seed (default: the study's).
        seeds: seeds ``0..seeds-1`` (default: the study's; 1 with ``quick``).
        tasks: task columns instead of the study's.

    Returns:
        The :class:`Setting` every row of the study shares.

    Raises:
        ConfigError: a budget or seed count that is not positive; an unknown task; a task that a
            row's model family cannot be fine-tuned on.
    """
    if budget_minutes is not None and not budget_minutes > 0:
        raise ConfigError(f"--budget-minutes must be positive (minutes of pre-training per row and seed), got {budget_minutes:g}")
    if seeds is not None and seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    chosen = list(tasks) if tasks else list(study.tasks)
    for t in chosen:
        if t not in TASK_TYPES:
            raise ConfigError(f"--tasks: unknown task {t!r}; studies use {', '.join(TASK_TYPES)}")
    if tasks:  # an explicit task must fit every row; default columns mark unfit cells n/a
        for t in chosen:
            bad = [r for r in study.rows_for(quick) if not r.fits(TASK_TYPES[t])]
            if bad:
                r = bad[0]
                raise ConfigError(f"--tasks {t}: a {TASK_TYPES[t]} task does not fit row {r.name!r} "
                                  f"({r.objective or r.baseline} on {r.family or 'a baseline'}); choose tasks every "
                                  "row can be fine-tuned on, or leave --tasks out (unfit cells are then n/a)")
    if quick:
        s = Setting(quick=True, vocab_size=800, corpus_docs=300, seq_len=64, batch_size=8, lr=1e-3,
                    pretrain_minutes=0.0, pretrain_steps=10,
                    base_model={"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64, "n_decoder_layers": 1,
                                "d_head": 0, "max_positions": 128},
                    finetune={"epochs": 1.0, "batch_size": 16, "lr": 1e-3, "max_length": 40, "max_target_length": 12,
                              "validation_size": 24, "test_size": 24},
                    train_size=48, train_sizes=list(study.quick_train_sizes or []), seeds=[0],
                    cost={"track_energy": False, "peak_flops": 1e10})
    else:
        s = Setting(pretrain_minutes=study.budget_minutes, train_sizes=list(study.train_sizes or []),
                    train_size=1000, seeds=list(range(study.seeds)),
                    finetune={"epochs": 2.0, "batch_size": 16, "lr": 1e-4, "max_length": 96, "max_target_length": 24,
                              "validation_size": 300, "test_size": 300})
    if budget_minutes is not None:
        s.pretrain_minutes, s.pretrain_steps = float(budget_minutes), 0
    if seeds is not None:
        s.seeds = list(range(seeds))
    s.tasks = chosen
    return s


# ------------------------------------------------------------------------------ folder identity
def check_folder(out: Path, study: Study) -> dict[str, Any] | None:
    """The folder's study.json, after checking it belongs to ``study``.

    Args:
        out: the results folder (it may not exist yet).
        study: the study about to run there.

    Returns:
        The parsed study.json, or None for a new folder.

    Raises:
        ConfigError: the folder holds another study's results, or results without a study.json
            (a comparison folder, say).
    """
    meta_path = out / STUDY_FILE
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ConfigError(f"{meta_path}:{e.lineno}: invalid JSON ({e.msg}); not a study folder") from None
        if not isinstance(meta, dict) or "study" not in meta:
            raise ConfigError(f"{meta_path}: not a study file (no 'study' key)")
        if meta["study"] != study.name:
            raise ConfigError(f"{out}: holds the results of study {meta['study']!r}, not {study.name!r}; "
                              "choose another --out")
        return meta
    if (out / "results.jsonl").exists():
        raise ConfigError(f"{out}: holds results.jsonl but no {STUDY_FILE} (a comparison folder?); choose another --out")
    return None


def versions() -> dict[str, str]:
    """The versions a report prints (python, transferlab, torch, numpy, platform)."""
    import platform
    from importlib import metadata

    from .._version import __version__  # where it lives (the package root only re-exports it)

    out = {"python": platform.python_version(), "transferlab": __version__, "platform": platform.platform()}
    # the installed distributions' metadata: no package is imported just to print its version
    for key, dist in (("torch", "torch"), ("numpy", "numpy"), ("tokenizers", "tokenizers"),
                      ("sklearn", "scikit-learn"), ("matplotlib", "matplotlib")):
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:  # a missing optional package is simply not listed
            pass
    return out


# ------------------------------------------------------------------------------ names
def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:48] or "row"


def pair_task_entry(d: Path) -> dict[str, Any]:
    """The comparison task mapping of the study-made pair task whose files are in ``d``."""
    return {"name": PAIR_TASK, "train_file": str(d / "train.jsonl"), "validation_file": str(d / "validation.jsonl"),
            "test_file": str(d / "test.jsonl"), "task_type": task_type_of(PAIR_TASK), "text_column": "text",
            "pair_column": "pair", "label_column": "label"}


# ------------------------------------------------------------------------------ plan
class StudyPlan:
    """The comparisons (one per task column) a study and its setting amount to."""

    def __init__(self, study: Study, setting: Setting, out: Path) -> None:
        self.study, self.setting, self.out = study, setting, out
        self.rows = study.rows_for(setting.quick)
        self.fp = setting.fingerprint()

    def row_dir(self, row: Row) -> Path:
        spec = json.dumps(dataclasses.asdict(row), sort_keys=True, default=str)
        h = hashlib.sha256((self.fp + spec).encode()).hexdigest()[:8]
        return self.out / "pretrain" / f"{_slug(row.name)}-{h}"

    def sizes(self) -> list[int]:
        if self.study.layout == "curve":
            return list(self.setting.train_sizes)
        return [self.setting.train_size]

    def compare_config(self, task: str, shared: Any = None) -> Any:
        """The comparison of the rows that fit ``task`` (``shared`` None: planning only)."""
        from .config import parse_compare_config

        models: list[Any] = []
        for r in self.rows:
            if not r.fits(TASK_TYPES[task]):
                continue
            if r.baseline:
                models.append({"name": r.name, "baseline": r.baseline})
            else:
                self.row_dir(r).mkdir(parents=True, exist_ok=True)
                models.append({"name": r.name, "model": str(self.row_dir(r)), "from_scratch": r.scratch})
        entry: Any = task
        if task == PAIR_TASK:
            entry = shared.task_entry(task) if shared else pair_task_entry(self.out / "shared" / PAIR_TASK)
        ft = dict(self.setting.finetune)
        if self.setting.cost:
            ft["cost"] = dict(self.setting.cost)
        raw = {"out_dir": str(self.out), "tasks": [entry], "train_sizes": self.sizes(), "seeds": list(self.setting.seeds),
               "models": models, "eval_on_test": True, "finetune": ft}
        return parse_compare_config(raw, source=f"study {self.study.name}")



def load_plan(out: Path) -> StudyPlan:
    """The plan recorded in ``out/study.json`` (for ``transferlab report``).

    Args:
        out: a study folder.

    Returns:
        Its :class:`StudyPlan` (settings the current code does not know are ignored).
    """
    meta = json.loads((out / STUDY_FILE).read_text(encoding="utf-8"))
    study = get_study(meta["study"])
    fields = {f.name for f in dataclasses.fields(Setting)}
    setting = Setting(**{k: v for k, v in meta.get("setting", {}).items() if k in fields})
    return StudyPlan(study, setting, out)


