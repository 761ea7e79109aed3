"""``transferlab study NAME``: the lecture's tables, one command each, in one shared setting.

What a study is (the declarative :data:`STUDIES` entries, their rows and columns, the one
:class:`Setting` every row shares) is told in :mod:`transferlab.experiments.studies`; this module
runs them.

The grid runs on :func:`transferlab.experiments.grid.run_compare` (one comparison per task
column, all writing the same ``DIR/results.jsonl``), so a study resumes like a comparison: a
finished cell is never re-run, a killed run continues at the next unfinished cell, and a
pre-training run already saved under ``DIR/pretrain/`` is reused. Pre-training runs add one
``task: "lm"`` row each (validation perplexity and the pre-training cost) to the same log.

``DIR/study.json`` names the study a folder belongs to (a folder of another study, or of a
comparison, is refused); :func:`write_study_report` turns the log into ``report.md`` and the
self-contained ``report.html`` (see :mod:`transferlab.experiments.report`).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import itertools
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..utils import atomic_write_text
from .studies import (LM_TASK, PAIR_TASK, STUDIES, STUDY_FILE, TASK_TYPES, Row, Setting, Study, StudyPlan,
                      check_folder, get_study, load_plan, make_setting, pair_task_entry, versions)

#: re-exported: ``transferlab.experiments.study`` is where a user meets the studies
__all__ = ["LM_TASK", "PAIR_TASK", "STUDIES", "STUDY_FILE", "TASK_TYPES", "Row", "Setting", "Study", "StudyPlan",
           "StudyRun", "check_folder", "get_study", "load_plan", "make_setting", "run_study", "versions",
           "write_pair_task"]


# ------------------------------------------------------------------------------ data
class _Shared:
    """The study's corpus sample, tokenizers, prepared shards and study-made task files (made once)."""

    def __init__(self, out: Path, setting: Setting, progress: bool) -> None:
        self.out, self.s, self.progress = out, setting, progress

    def corpus(self) -> Path:
        path = self.out / "shared" / "corpus.jsonl"
        if not path.exists():
            from ..data import read_documents

            docs = itertools.islice(read_documents("builtin:reviews+news"), self.s.corpus_docs)
            atomic_write_text(path, "".join(json.dumps({"text": d.text}) + "\n" for d in docs))
        return path

    def tokenizer(self, kind: str) -> Any:
        from ..tokenizer import Tokenizer

        d = self.out / "shared" / f"tokenizer-{kind}"
        if (d / "tokenizer.json").exists():
            return Tokenizer.from_pretrained(d)
        tok = Tokenizer.train([str(self.corpus())], kind=kind, vocab_size=self.s.vocab_size)
        tok.save(d)
        return tok

    def data(self, kind: str) -> Path:
        from ..data import prepare_corpus

        d = self.out / "shared" / f"data-{kind}"
        prepare_corpus([str(self.corpus())], self.tokenizer(kind), d, val_fraction=0.05, workers=1, progress=False)
        return d

    def task_entry(self, name: str) -> Any:
        """A built-in task's name, or the file mapping of the study-made pair task (written once)."""
        if name != PAIR_TASK:
            return name
        d = self.out / "shared" / PAIR_TASK
        if not (d / "test.jsonl").exists():
            write_pair_task(d)
        return pair_task_entry(d)


def write_pair_task(folder: Path) -> None:
    """``bbc-pairs``: (a sentence, the next sentence of its article) -> ``next``, or (a sentence,
    a sentence of another article) -> ``random``, half each, from bbc-topic's fixed splits (so the
    test articles stay held out). Deterministic: the choices hash the article text."""
    from ..data import split_sentences
    from ..data.builtin import load_task

    task = load_task("bbc-topic")
    for split in ("train", "validation", "test"):
        exs = getattr(task, split)
        sents = []
        for ex in exs:
            ss = [ex["text"][a:b].strip() for a, b in split_sentences(ex["text"])]
            sents.append([s for s in ss if len(s.split()) >= 4])
        lines = []
        for i, ss in enumerate(sents):
            if len(ss) < 3:
                continue
            h = int(hashlib.sha256(exs[i]["text"].encode()).hexdigest()[:8], 16)
            k = h % (len(ss) - 1)
            if h % 2:
                other = sents[(i + 1 + h % max(1, len(sents) - 1)) % len(sents)] or ss
                pair, label = other[h % len(other)], "random"
            else:
                pair, label = ss[k + 1], "next"
            lines.append(json.dumps({"text": ss[k], "pair": pair, "label": label}) + "\n")
        atomic_write_text(folder / f"{split}.jsonl", "".join(lines))


# ------------------------------------------------------------------------------ running
#: (row, seed, shared, out_dir of the run) -> pre-training summary; tests pass a stand-in
Pretrainer = Callable[[Row, int, Any, Path], dict[str, Any]]


@dataclass
class StudyRun:
    """What :func:`run_study` did."""

    out_dir: Path
    n_cells: int
    n_run: int
    n_skipped: int
    failures: list[dict[str, str]]
    files: list[Path]


def _pretrain_row(row: Row, seed: int, shared: _Shared, run_dir: Path) -> dict[str, Any]:
    """Pre-train ``row`` (or save its untrained architecture for a scratch row) into ``run_dir``."""
    from ..checks import tokenizer_record
    from ..config import apply_overrides, get_preset
    from ..cost import CostConfig
    from ..models.model import TransferModel
    from ..training.config import TrainConfig
    from ..training.pretrain import fit_config_to_tokenizer, pretrain

    s = shared.s
    overrides = _overrides(row, s)
    resume = not row.scratch and (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir())
    if not resume and run_dir.exists():  # killed before its first checkpoint: nothing finished to keep
        import shutil

        shutil.rmtree(run_dir)
    if row.scratch:  # the architecture only: fine-tuning re-initialises it (from_scratch)
        tok = shared.tokenizer(row.tokenizer)
        cfg = get_preset(row.preset)
        apply_overrides(cfg, overrides, prefix="model")
        fit_config_to_tokenizer(cfg, tok)
        TransferModel(cfg).save_pretrained(run_dir / "model", extra_config=tokenizer_record(tok))  # as pretrain saves
        tok.save(run_dir / "model")
        summary = {"scratch": True}
        atomic_write_text(run_dir / "summary.json", json.dumps(summary) + "\n")
        return summary
    data = shared.data(row.tokenizer)
    tcfg = TrainConfig(max_minutes=s.pretrain_minutes, max_steps=s.pretrain_steps, batch_size=s.batch_size,
                       seq_len=s.seq_len, lr=s.lr, seed=seed, eval_every=0 if s.quick else 200,
                       eval_batches=1 if s.quick else 20, save_every=0 if s.quick else 500, log_every=5,
                       progress=shared.progress, tensorboard=False)
    return pretrain(row.preset, row.objective or "mlm", dict(row.settings), tcfg, data, run_dir, resume=resume,
                    model_overrides=overrides, cost=CostConfig(**s.cost))


def _overrides(row: Row, s: Setting) -> dict[str, str]:
    base = dict(s.base_model)
    if row.family != "encoder-decoder":
        base.pop("n_decoder_layers", None)
    out = {**base, **row.model}
    return {k: (json.dumps(v) if isinstance(v, (list, dict)) else str(v).lower() if isinstance(v, bool) else str(v))
            for k, v in out.items()}


_COST_KEYS = ("flops", "energy_kwh", "co2e_kg", "price_usd")


def run_study(study: Study, setting: Setting, out: str | Path, progress: bool = True, command: str | None = None,
              runner: Any = None, pretrainer: Pretrainer | None = None, report: bool = True) -> StudyRun:
    """Run every unfinished cell of ``study`` into ``out``, then write the report.

    Args:
        study, setting: what to run (see :func:`make_setting`).
        out: the results folder (created; refused if it holds another study or a comparison).
        progress: progress bars.
        command: the command line recorded in study.json and the report.
        runner: fine-tuning stand-in for tests (see :func:`transferlab.experiments.grid.run_compare`).
        pretrainer: pre-training stand-in for tests (see :data:`Pretrainer`).
        report: write report.md / report.html.

    Returns:
        :class:`StudyRun`.
    """
    from . import grid as cmp

    out = Path(out).resolve()
    meta = check_folder(out, study) or {"study": study.name, "created": _now(), "commands": []}
    out.mkdir(parents=True, exist_ok=True)
    meta.update(setting=dataclasses.asdict(setting), versions=versions(), title=study.title)
    meta["commands"] = [*meta.get("commands", []), {"at": _now(), "command": command or " ".join(sys.argv)}]
    atomic_write_text(out / STUDY_FILE, json.dumps(meta, indent=2) + "\n")

    plan = StudyPlan(study, setting, out)
    shared = _Shared(out, setting, progress)
    pre = pretrainer or _pretrain_row
    results = out / cmp.RESULTS
    by_name = {r.name: r for r in plan.rows}

    def lm_done() -> set[tuple[str, int, str]]:
        return {(r["method"], int(r["seed"]), r["spec"]) for r in cmp.read_results(results) if r["task"] == LM_TASK}

    def model_for(row: Row, seed: int) -> Path:
        run_dir = plan.row_dir(row) / f"seed{seed}"
        spec = plan.row_dir(row).name
        if not (run_dir / "summary.json").exists():  # written last: a run without it is unfinished
            summary = pre(row, seed, shared, run_dir)
        else:
            summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
        if not row.scratch and (row.name, seed, spec) not in lm_done():
            cost = summary.get("cost") or {}
            cmp.append_row(results, {
                "method": row.name, "group": row.group, "task": LM_TASK, "task_type": "pretrain",
                "train_size": "-", "seed": seed, "spec": spec, "objective": row.objective, "metric": "ppl",
                "val_ppl": summary.get("val_ppl"), "val_loss": summary.get("val_loss"),
                "steps": summary.get("steps"), "tokens": summary.get("tokens"),
                "train_seconds": float(summary.get("train_seconds") or cost.get("wall_seconds") or 0.0),
                "cost": {k: cost[k] for k in _COST_KEYS if isinstance(cost.get(k), (int, float))},
                "finished_at": _now()})
        return run_dir / "model"

    def run_cell(cell: Any, ck: Path | None) -> dict[str, Any]:
        row = by_name[cell.method.name]
        model = model_for(row, cell.seed)
        cell = dataclasses.replace(cell, method=dataclasses.replace(cell.method, model=str(model)))
        return (runner or cmp.run_finetune_cell)(cell, ck)

    n_cells = n_run = n_skipped = 0
    failures: list[dict[str, str]] = []
    for task in setting.tasks:
        cfg = plan.compare_config(task, shared)
        rep = cmp.run_compare(cfg, progress=progress, runner=run_cell, plots=False)
        n_cells += rep.n_cells
        n_run += rep.n_run
        n_skipped += rep.n_skipped
        failures += rep.failures
    for row in plan.rows:  # an LM row lost to a kill between pre-training and its log line
        if row.objective and not row.scratch:
            for seed in setting.seeds:
                if (plan.row_dir(row) / f"seed{seed}" / "summary.json").exists():
                    model_for(row, seed)
    files = [results]
    if report:
        from .report import write_study_report

        files += write_study_report(out)
    return StudyRun(out, n_cells, n_run, n_skipped, failures, files)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
