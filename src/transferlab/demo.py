"""``transferlab demo``: the whole paradigm, end to end, on data that installs with the package.

1. train a WordPiece tokenizer on ``builtin:reviews+news`` (IMDb/Rotten Tomatoes reviews without
   the held-out evaluation documents, plus BBC article bodies);
2. tokenize the corpus once into memory-mapped shards;
3. pre-train ``bert-mini`` with masked language modelling for a wall-clock budget;
4. on ``imdb`` with a small labelled set, over several seeds: fine-tune that model, the same
   architecture from scratch, the real all-MiniLM-L6-v2 checkpoint, and fit TF-IDF + logistic
   regression and the majority class (the comparison grid of :mod:`transferlab.experiments.grid`);
5. print one table — method, accuracy (mean ± std over seeds), training time, energy, CO2e, price —
   and write ``summary.md``, the plots (pre-training loss curve, learning curve, accuracy vs cost)
   and every intermediate artefact into one run directory.

Every step is resumable: rerunning the demo on the same directory skips finished steps
(tokenizer, shards, the pre-training run, finished comparison cells).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .utils import atomic_write_text


@dataclass
class DemoConfig:
    """Sizes of the demo. The defaults take about 15 minutes on 2 CPU cores; ``quick`` about 2."""

    out_dir: str = "runs/demo"
    """Run directory (everything the demo writes goes here)."""
    vocab_size: int = 8000
    """WordPiece vocabulary size."""
    corpus_docs: int | None = None
    """Pre-train on the first N documents of the corpus only (None: all of it)."""
    pretrain_minutes: float = 4.0
    """Wall-clock budget of the bert-mini MLM pre-training."""
    train_sizes: list[int] = field(default_factory=lambda: [200, 500])
    """Labelled IMDb examples for fine-tuning (several sizes give a learning curve)."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Seeds of every fine-tuning cell (mean ± std over them)."""
    max_length: int = 96
    """Tokens per review for the transformers (reviews average ~300 word pieces; TF-IDF sees all)."""
    epochs: float = 3.0
    """Fine-tuning epochs."""
    test_size: int | None = 1000
    """Score on this many IMDb test reviews (a fixed subset; None: all 2,000)."""
    minilm: bool = True
    """Include the real pre-trained all-MiniLM-L6-v2 checkpoint."""

    @classmethod
    def quick_config(cls, out_dir: str = "runs/demo-quick") -> "DemoConfig":
        return cls(out_dir=out_dir, vocab_size=4000, corpus_docs=3000, pretrain_minutes=0.5,
                   train_sizes=[200], seeds=[0, 1], max_length=64, epochs=2.0, test_size=300)

    def validate(self) -> "DemoConfig":
        if self.pretrain_minutes <= 0:
            raise ConfigError(f"demo: pretrain_minutes must be positive, got {self.pretrain_minutes}")
        if not self.train_sizes or any(s <= 0 for s in self.train_sizes):
            raise ConfigError(f"demo: train_sizes must be positive integers, got {self.train_sizes}")
        if not self.seeds:
            raise ConfigError("demo: at least one seed is needed")
        if any(s < 0 for s in self.seeds):
            raise ConfigError(f"demo: seeds must be integers >= 0, got {self.seeds}")
        return self


def _log(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def _corpus_inputs(cfg: DemoConfig, out: Path) -> list[str]:
    """``builtin:reviews+news``, or a sample file of its first ``corpus_docs`` documents."""
    if cfg.corpus_docs is None:
        return ["builtin:reviews+news"]
    sample = out / "corpus-sample.jsonl"
    if not sample.exists():
        from .data import read_documents

        lines = []
        for i, doc in enumerate(read_documents("builtin:reviews+news")):
            if i >= cfg.corpus_docs:
                break
            lines.append(json.dumps({"text": doc.text}))
        atomic_write_text(sample, "\n".join(lines) + "\n")
    return [str(sample)]


def run_demo(cfg: DemoConfig, progress: bool = True) -> dict[str, Any]:
    """Run the demo (every finished step is reused when rerun on the same folder).

    Args:
        cfg: the demo's sizes and folder.
        progress: tqdm bars.

    Returns:
        ``table`` (markdown), ``pretrain`` (its summary), ``plots`` (paths), ``seconds`` and
        ``out_dir``; the same is written to ``summary.json``.
    """
    cfg.validate()
    from .data import prepare_corpus
    from .experiments.config import parse_compare_config
    from .experiments.grid import run_compare
    from .tokenizer import Tokenizer
    from .training.config import TrainConfig
    from .training.pretrain import pretrain

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "demo_config.json", json.dumps(asdict(cfg), indent=2) + "\n")
    t_start = time.perf_counter()
    inputs = _corpus_inputs(cfg, out)

    # 1. tokenizer ------------------------------------------------------------------------
    tok_dir = out / "tokenizer"
    if (tok_dir / "tokenizer.json").exists():
        tok = Tokenizer.from_pretrained(tok_dir)
        _log(f"1/5 tokenizer: reusing {tok_dir} ({tok.vocab_size} tokens)")
    else:
        t0 = time.perf_counter()
        tok = Tokenizer.train(inputs, kind="wordpiece", vocab_size=cfg.vocab_size, lowercase=True)
        from .utils import atomic_dir

        with atomic_dir(tok_dir) as tmp:  # tokenizer.json and its config together, or neither
            tok.save(tmp)
        _log(f"1/5 tokenizer: WordPiece, {tok.vocab_size} tokens, {time.perf_counter() - t0:.0f}s -> {tok_dir}")

    # 2. shards -----------------------------------------------------------------------------
    data_dir = out / "data"
    summ = prepare_corpus(inputs, tok, data_dir, workers=2, progress=progress)
    _log(f"2/5 prepare: {summ['tokens']:,} tokens, {summ['documents']:,} documents"
         + (" (already prepared)" if summ.get("skipped") else f", {summ.get('mb_per_s', 0):.1f} MB/s"))

    # 3. pre-training -------------------------------------------------------------------------
    pre_dir = out / "bert-mini-mlm"
    model_dir = pre_dir / "model"
    if (model_dir / "model.safetensors").exists():
        pre = json.loads((pre_dir / "summary.json").read_text()) if (pre_dir / "summary.json").exists() else {}
        _log(f"3/5 pretrain: reusing {model_dir}")
    else:
        _log(f"3/5 pretrain: bert-mini, masked LM, {cfg.pretrain_minutes:g} minutes")
        resume = (pre_dir / "checkpoints").exists()
        tcfg = TrainConfig(max_minutes=cfg.pretrain_minutes, eval_every=200, save_every=500, progress=progress)
        pre = pretrain("bert-mini", "mlm", None, tcfg, data_dir, pre_dir, resume=resume)
    # 4. comparison -------------------------------------------------------------------------
    models: list[Any] = ["majority", "tfidf-logreg",
                         {"name": "bert-mini (pre-trained)", "model": str(model_dir)},
                         {"name": "bert-mini (from scratch)", "model": str(model_dir), "from_scratch": True,
                          "finetune": {"lr": 3.0e-4}}]
    if cfg.minilm:
        models.append({"name": "MiniLM-L6 (pre-trained)", "model": "builtin:minilm", "finetune": {"lr": 1.0e-4}})
    raw = {
        "out_dir": str(out / "compare"), "tasks": ["imdb"], "train_sizes": list(cfg.train_sizes),
        "seeds": list(cfg.seeds), "models": models, "eval_on_test": True, "min_steps": 30,
        "finetune": {"epochs": cfg.epochs, "batch_size": 16, "lr": 1.0e-4, "max_length": cfg.max_length,
                     "validation_size": 200, "test_size": cfg.test_size, "dtype": "auto"},
    }
    ccfg = parse_compare_config(raw, source="demo")
    n_cells = len(ccfg.models) * len(ccfg.train_sizes) * len(ccfg.seeds)
    _log(f"4/5 compare: {len(ccfg.models)} methods x {len(cfg.train_sizes)} sizes x {len(cfg.seeds)} seeds "
         f"= {n_cells} cells on imdb")
    report = run_compare(ccfg, progress=progress)

    # 5. summary -------------------------------------------------------------------------------
    plots = sorted(str(p) for p in (out / "compare" / "plots").glob("*.png")) if (out / "compare" / "plots").exists() else []
    curve = pre_dir / "loss_curve.png"
    if curve.exists():
        shutil.copyfile(curve, out / "pretrain_loss_curve.png")
        plots.insert(0, str(out / "pretrain_loss_curve.png"))
    total = time.perf_counter() - t_start
    md = _summary_markdown(cfg, pre, report.table, plots, total, out)
    atomic_write_text(out / "summary.md", md)
    result = {"table": report.table, "pretrain": pre, "plots": plots, "seconds": total, "out_dir": str(out)}
    atomic_write_text(out / "summary.json", json.dumps(result, indent=2, default=str) + "\n")
    _log(f"5/5 done in {total / 60:.1f} min -> {out / 'summary.md'}")
    print()
    print(report.table)
    return result


def _summary_markdown(cfg: DemoConfig, pre: dict[str, Any], table: str, plots: list[str], seconds: float,
                      out: Path) -> str:
    lines = ["# transferlab demo", "",
             f"Pre-train `bert-mini` (masked LM, {cfg.pretrain_minutes:g} min on `builtin:reviews+news`), then "
             f"fine-tune on `imdb` with {', '.join(map(str, cfg.train_sizes))} labelled reviews over seeds "
             f"{', '.join(map(str, cfg.seeds))}, beside the same architecture from scratch, all-MiniLM-L6-v2, "
             "TF-IDF + logistic regression and the majority class.", ""]
    if pre:
        keep = {k: pre[k] for k in ("steps", "tokens", "train_seconds", "final_train_loss", "val_loss",
                                    "val_perplexity") if k in pre}
        if keep:
            lines += ["## Pre-training", "", "| " + " | ".join(keep) + " |", "|" + "---|" * len(keep),
                      "| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in keep.values()) + " |", ""]
        cost = pre.get("cost") or {}
        if cost:
            lines += [f"Pre-training cost: {cost.get('wall_seconds', 0):.0f} s, "
                      f"{cost.get('energy_kwh', 0):.4f} kWh ({cost.get('energy_source', '?')}), "
                      f"{cost.get('co2e_kg', 0):.4f} kg CO2e, ${cost.get('price_usd', 0):.4f}", ""]
    lines += ["## IMDb test accuracy", "", table, ""]
    if plots:
        lines += ["## Plots", ""] + [f"![{Path(p).stem}]({Path(p).relative_to(out)})" for p in plots] + [""]
    lines += [f"Total wall time: {seconds / 60:.1f} min. Rerun `transferlab demo` on the same directory to "
              "reuse finished steps.", ""]
    return "\n".join(lines)
