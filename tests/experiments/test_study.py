"""``transferlab study`` and ``transferlab report``: definitions, resume, tables, bad input, the
HTML report (self-contained; rendered in a real headless chromium).

The grid tests swap pre-training and fine-tuning for instant stand-ins (the real paths are the
library's own, tested elsewhere; one slow test runs ``study nsp --quick`` end to end), so they
check the study machinery itself: which cells run, that a killed study resumes without re-running
a finished cell, the paper layout, the bold-only-beyond-noise rule and the cost columns.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from transferlab.cli import main
from transferlab.errors import ConfigError, TransferlabError
from transferlab.experiments import report as rep
from transferlab.finetune.metrics import primary_metric
from transferlab.experiments.study import STUDIES, TASK_TYPES, get_study, make_setting, run_study

COST = {"flops": 2.0e9, "energy_kwh": 1.0e-6, "co2e_kg": 4.0e-7, "price_usd": 1.0e-5}


class Fakes:
    """Instant pre-training / fine-tuning with deterministic scores (row index + seed noise)."""

    def __init__(self, study, fail_at: int | None = None) -> None:
        self.order = {r.name: i for i, r in enumerate(study.rows_for(True))}
        self.pretrained: list[tuple[str, int]] = []
        self.finetuned: list[tuple[str, str, str, int]] = []
        self.fail_at = fail_at

    def pretrain(self, row, seed, shared, run_dir: Path) -> dict:
        self.pretrained.append((row.name, seed))
        (run_dir / "model").mkdir(parents=True, exist_ok=True)
        (run_dir / "model" / "model.safetensors").write_bytes(b"stand-in")
        (run_dir / "metrics.jsonl").write_text("".join(
            json.dumps({"split": "train", "step": s, "loss": 5.0 - 0.1 * s - 0.05 * self.order[row.name]}) + "\n"
            for s in range(1, 6)) + json.dumps({"split": "validation", "step": 5, "val_loss": 4.8}) + "\n")
        summary = {"val_ppl": 100.0 + 10 * self.order[row.name] + seed, "val_loss": 4.6, "train_seconds": 2.0,
                   "steps": 5, "cost": dict(COST)}
        (run_dir / "summary.json").write_text(json.dumps(summary))
        return summary

    def finetune(self, cell, ck) -> dict:
        if self.fail_at is not None and len(self.finetuned) == self.fail_at:
            raise KeyboardInterrupt  # the study is killed mid-grid
        self.finetuned.append(cell.key)
        tt = TASK_TYPES[cell.task.name]
        score = 0.5 + 0.02 * self.order[cell.method.name] + 0.001 * cell.seed
        assert Path(cell.method.model).name == "model"  # the row's own pre-trained model of this seed
        assert f"seed{cell.seed}" in cell.method.model
        m = {primary_metric(tt): score}
        return {"task_type": tt, "validation": m, "test": m, "train_seconds": 1.5, "n_train": 64, "cost": dict(COST)}


def _run(study_name: str, out: Path, fakes: Fakes | None = None, seeds: int = 2, report: bool = True, **kw):
    study = get_study(study_name)
    fakes = fakes or Fakes(study)
    setting = make_setting(study, quick=True, seeds=seeds, **kw)
    res = run_study(study, setting, out, progress=False, command=f"transferlab study {study_name} --quick",
                    runner=fakes.finetune, pretrainer=fakes.pretrain, report=report)
    return res, fakes


# ------------------------------------------------------------------------------ definitions
def test_list_names_every_study(capsys):
    assert main(["study", "--list"]) == 0
    out = capsys.readouterr().out
    for name in ("bert-size", "objectives", "nsp", "modifications", "ulmfit-curve"):
        assert re.search(rf"^{name}\s", out, re.M)


def test_objectives_study_has_barts_rows_and_columns():
    s = STUDIES["objectives"]
    objs = [r.objective for r in s.rows]
    for o in ("clm", "plm", "mlm", "mtlm", "mass", "denoise", "electra", "span-corruption"):
        assert o in objs
    noises = [tuple(r.settings["noise"]) for r in s.rows if r.objective == "denoise"]
    assert ("infill", "permute") in noises and len(noises) == 6
    assert [TASK_TYPES[t] for t in s.tasks] == ["classification", "tagging", "seq2seq"] and s.lm_ppl
    assert "bbc-headlines" in s.tasks
    # the family each objective needs: encoders cannot generate headlines
    by = {r.objective: r for r in s.rows}
    assert not by["mlm"].fits("seq2seq") and by["mass"].fits("seq2seq") and by["clm"].fits("seq2seq")


# ------------------------------------------------------------------------------ bad input
def test_unknown_study_is_a_one_line_error(capsys, tmp_path):
    assert main(["study", "bart-size", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown study 'bart-size'" in err and "objectives" in err


def test_study_needs_a_name_and_an_out_folder(capsys):
    assert main(["study"]) == 2 and "name a study" in capsys.readouterr().err
    assert main(["study", "nsp"]) == 2 and "--out DIR is required" in capsys.readouterr().err


def test_budget_of_zero_is_refused(capsys, tmp_path):
    assert main(["study", "nsp", "--budget-minutes", "0", "--out", str(tmp_path / "o")]) == 2
    assert "--budget-minutes must be positive" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--seeds must be at least 1"):
        make_setting(get_study("nsp"), seeds=0)


def test_task_that_does_not_fit_a_family_is_refused(capsys, tmp_path):
    assert main(["study", "objectives", "--tasks", "bbc-headlines", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not fit row" in err and "encoder" in err
    with pytest.raises(ConfigError, match="unknown task 'squad'"):
        make_setting(get_study("nsp"), tasks=["squad"])


def test_folder_of_another_study_or_a_comparison_is_refused(tmp_path):
    out = tmp_path / "o"
    _run("nsp", out, seeds=1, tasks=["rotten-tomatoes"], report=False)
    with pytest.raises(TransferlabError, match="holds the results of study 'nsp', not 'bert-size'"):
        _run("bert-size", out, seeds=1, tasks=["rotten-tomatoes"])
    cmp_dir = tmp_path / "cmp"
    cmp_dir.mkdir()
    (cmp_dir / "results.jsonl").write_text("")
    with pytest.raises(TransferlabError, match="no study.json"):
        _run("bert-size", cmp_dir, seeds=1, tasks=["rotten-tomatoes"])


# ------------------------------------------------------------------------------ resume
def test_killed_study_resumes_and_never_reruns_a_finished_cell(tmp_path):
    out = tmp_path / "o"
    study = get_study("bert-size")
    first = Fakes(study, fail_at=4)
    with pytest.raises(KeyboardInterrupt):
        _run("bert-size", out, first, seeds=2, tasks=["rotten-tomatoes", "twitter-ner"], report=False)
    assert len(first.finetuned) == 4
    second = Fakes(study)
    res, _ = _run("bert-size", out, second, seeds=2, tasks=["rotten-tomatoes", "twitter-ner"], report=False)
    n_cells = len(study.rows_for(True)) * 2 * 2
    assert res.n_cells == n_cells and res.n_skipped == 4 and res.n_run == n_cells - 4
    assert not set(first.finetuned) & set(second.finetuned)  # nothing finished ran twice
    assert len(first.finetuned) + len(second.finetuned) == n_cells
    # every (row, seed) pre-trained exactly once over both runs, and logged once as an lm row
    assert sorted(first.pretrained + second.pretrained) == sorted({*first.pretrained, *second.pretrained})
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    keys = [(r["method"], r["task"], r["train_size"], r["seed"]) for r in rows]
    assert len(keys) == len(set(keys)) == n_cells + len(study.rows_for(True)) * 2
    third = Fakes(study)
    res, _ = _run("bert-size", out, third, seeds=2, tasks=["rotten-tomatoes", "twitter-ner"], report=False)
    assert res.n_run == 0 and third.finetuned == [] and third.pretrained == []


def test_pretraining_killed_before_its_summary_runs_again(tmp_path):
    out = tmp_path / "o"
    study = get_study("nsp")
    first = Fakes(study)
    real = first.pretrain

    def killed(row, seed, shared, run_dir):
        real(row, seed, shared, run_dir)
        (run_dir / "summary.json").unlink()  # killed after the model, before the summary
        raise KeyboardInterrupt

    first.pretrain = killed
    with pytest.raises(KeyboardInterrupt):
        _run("nsp", out, first, seeds=1, tasks=["rotten-tomatoes"], report=False)
    second = Fakes(study)
    res, _ = _run("nsp", out, second, seeds=1, tasks=["rotten-tomatoes"], report=False)
    assert res.n_run == 2 and sorted(second.pretrained) == [("BERT (MLM + NSP)", 0), ("No NSP (MLM)", 0)]


# ------------------------------------------------------------------------------ tables
def test_best_is_marked_only_beyond_the_seed_spread():
    assert rep.best_beyond_spread([(0.9, 0.01, 3), (0.8, 0.01, 3)], True) == 0
    assert rep.best_beyond_spread([(0.9, 0.06, 3), (0.8, 0.05, 3)], True) is None  # within noise
    assert rep.best_beyond_spread([(0.9, 0.0, 1), (0.8, 0.0, 1)], True) is None  # one seed: no spread
    assert rep.best_beyond_spread([(120.0, 1.0, 2), (90.0, 1.0, 2), None], False) == 1  # perplexity: lower
    assert rep.helps([(0.9, 0.01, 2), (0.5, 0.01, 2)], [(0.8, 0.01, 2), (0.5, 0.2, 2)], ["accuracy", "f1"]) == 1


def test_objectives_table_in_the_papers_layout(tmp_path):
    out = tmp_path / "o"
    res, fakes = _run("objectives", out, seeds=2)
    md = (out / "report.md").read_text()
    table = [ln for ln in md.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header[:4] == ["row", "rotten-tomatoes (accuracy)", "twitter-ner (f1)", "bbc-headlines (rougeL)"]
    assert header[4:] == ["LM ppl", "FLOPs", "minutes", "kWh", "CO2e (kg)", "$"]
    names = [c.strip("| ").split(" |")[0] for c in table[2:]]
    assert names == [r.name for r in get_study("objectives").rows]  # the paper's row order
    mlm = next(ln for ln in table if ln.startswith("| Masked Language Model |"))
    cells = [c.strip() for c in mlm.strip("|").split("|")]
    assert cells[3] == "n/a"  # an encoder has no headline cell
    assert re.fullmatch(r"0\.5\d* ± [\d.e-]+", cells[1])  # mean ± std over 2 seeds
    # cost: pre-training + two fine-tuning cells, per seed
    assert cells[5] == f"{3 * COST['flops']:.2e}" and cells[6] == f"{(2.0 + 2 * 1.5) / 60:.3g}"
    # the last row scores highest by 0.02 per row with 0.0007 spread: bold in every task column it has
    last = table[-1]
    assert last.count("**") == 2 * 3  # classification, tagging, generation
    # LM ppl: lowest is the first row (fake ppl grows with the row), ahead beyond spread; its
    # task scores are the lowest, so they are not bold
    assert table[2].count("**") == 2 and "**100.5 ± 0.71**" in table[2]
    assert len(fakes.pretrained) == len(get_study("objectives").rows) * 2
    for f in ("results.jsonl", "report.md", "report.html", "summary.csv", "plots/loss_curves.png",
              "plots/pareto_rotten-tomatoes.png"):
        assert (out / f).exists(), f


def test_modifications_table_counts_tasks_where_a_change_helps(tmp_path):
    out = tmp_path / "o"
    _run("modifications", out, seeds=2, tasks=["rotten-tomatoes", "twitter-ner"])
    table = [ln for ln in (out / "report.md").read_text().splitlines() if ln.startswith("|")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    k = header.index("helps on (of 2)")
    vals = [[c.strip() for c in ln.strip("|").split("|")][k] for ln in table[2:]]
    assert vals[0] == "-" and vals[1:] == ["2"] * (len(vals) - 1)  # each fake row beats vanilla by 0.02 > noise


def test_report_rebuilds_a_study_and_a_compare_folder(tmp_path, capsys):
    out = tmp_path / "o"
    _run("modifications", out, seeds=1, tasks=["rotten-tomatoes"])
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.html").exists() and "Vanilla Transformer" in (out / "report.html").read_text()
    cmp_dir = tmp_path / "cmp"
    cmp_dir.mkdir()
    rows = [{"method": m, "group": "tf-idf", "task": "imdb", "task_type": "classification", "train_size": "100",
             "seed": s, "metric": "accuracy", "spec": "x", "validation": {"accuracy": a + s / 100},
             "test": {"accuracy": a + s / 100}, "train_seconds": 1.0 + s, "n_train": 100, "cost": {}}
            for m, a in (("tfidf-logreg", 0.7), ("majority", 0.5)) for s in (0, 1)]
    (cmp_dir / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["report", str(cmp_dir)]) == 0
    page = (cmp_dir / "report.html").read_text()
    assert "tfidf-logreg" in page and "0.7050 ± 0.0071" in page and "data:image/png;base64," in page
    assert "<b>0.7050 ± 0.0071</b>" in page  # ahead of majority by 0.2, far beyond the 0.014 spread
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "not a study or comparison folder" in capsys.readouterr().err


def test_compare_report_marks_the_best_only_beyond_the_seed_spread(tmp_path):
    cmp_dir = tmp_path / "cmp"
    cmp_dir.mkdir()
    # imdb: a leads b by 0.01 with 0.014 spread (not bold); rotten-tomatoes: one seed each (never bold)
    scores = {("imdb", "a"): (0.71, 0.73), ("imdb", "b"): (0.70, 0.72), ("rotten-tomatoes", "a"): (0.9,),
              ("rotten-tomatoes", "b"): (0.5,)}
    rows = [{"method": m, "group": "tf-idf", "task": t, "task_type": "classification", "train_size": "100",
             "seed": s, "metric": "accuracy", "spec": "x", "validation": {"accuracy": v}, "test": {"accuracy": v},
             "train_seconds": 1.0, "n_train": 100, "cost": {}}
            for (t, m), vs in scores.items() for s, v in enumerate(vs)]
    (cmp_dir / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rep.write_report(cmp_dir)
    md = (cmp_dir / "report.md").read_text()
    assert "0.7200 ± 0.0141" in md and "**" not in md.split("## Plots")[0]


def test_html_report_is_self_contained(tmp_path):
    out = tmp_path / "o"
    _run("nsp", out, seeds=2, tasks=["rotten-tomatoes"])
    page = (out / "report.html").read_text()
    assert "<script" not in page and "<link" not in page and "@import" not in page
    assert not re.search(r"(src|href)=['\"]?(https?:|//)", page)
    srcs = re.findall(r"<img[^>]*src='([^']*)'", page)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "transferlab study nsp --quick" in page and "torch" in page  # commands and versions


# ------------------------------------------------------------------------------ a real browser
def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("chromium is not installed and could not be installed here (.ci/run installs it with apt-get)")


def _chrome(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}"]
    return subprocess.run([_chromium(), *flags, *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def report_page(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("study") / "o"
    _run("objectives", out, seeds=2, tasks=["rotten-tomatoes"])
    return out / "report.html"


def test_report_renders_in_headless_chromium(report_page, tmp_path):
    page = report_page.read_text()
    n_img, n_tab = page.count("<img"), page.count("<table")
    probe = tmp_path / "probe.html"  # the report plus a script that counts what rendered
    probe.write_text(page.replace("</body>", """<script>window.addEventListener('load', () => {
      const imgs = [...document.images];
      const tabs = [...document.querySelectorAll('table')];
      document.body.setAttribute('data-probe', JSON.stringify({
        images: imgs.length, broken: imgs.filter(i => !i.complete || i.naturalWidth === 0).length,
        tables: tabs.length, empty_tables: tabs.filter(t => t.rows.length < 2 || t.offsetHeight === 0).length}));
    });</script></body>"""))
    res = _chrome(tmp_path, "--virtual-time-budget=10000", "--enable-logging=stderr", "--v=0", "--dump-dom",
                  probe.as_uri())
    m = re.search(r"data-probe=\"([^\"]*)\"", res.stdout)
    assert m, res.stderr[-2000:]
    got = json.loads(m.group(1).replace("&quot;", '"'))
    assert got == {"images": n_img, "broken": 0, "tables": n_tab, "empty_tables": 0} and n_img >= 2
    console = [ln for ln in res.stderr.splitlines() if "CONSOLE" in ln]
    assert not console, console  # the page logs nothing (no script of its own, no failed load)
    # the check can see a console error: the same page with one logs it
    bad = tmp_path / "bad.html"
    bad.write_text(page.replace("</body>", "<script>console.error('probe-error')</script></body>"))
    res = _chrome(tmp_path, "--virtual-time-budget=5000", "--enable-logging=stderr", "--v=0", "--dump-dom",
                  bad.as_uri())
    assert any("CONSOLE" in ln and "probe-error" in ln for ln in res.stderr.splitlines()), res.stderr[-2000:]


def test_report_screenshot_is_not_blank(report_page, tmp_path):
    from PIL import Image

    shot = tmp_path / "shot.png"
    res = _chrome(tmp_path, "--window-size=1280,2400", "--hide-scrollbars", f"--screenshot={shot}",
                  report_page.as_uri())
    assert shot.exists(), res.stderr[-2000:]
    img = Image.open(shot).convert("L")
    assert img.size == (1280, 2400)
    lo, hi = img.getextrema()
    hist = img.histogram()
    assert hi - lo > 100 and max(hist) < 0.97 * sum(hist)  # text, tables and plots, not one flat colour


# ------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_study_quick_end_to_end(tmp_path, capsys):
    """The real path: shared tokenizer and shards, MLM and MLM+NSP pre-training, fine-tuning on
    the study-made pair task, report; then a rerun runs nothing."""
    out = tmp_path / "nsp"
    assert main(["study", "nsp", "--quick", "--quiet", "--out", str(out)]) == 0
    page = (out / "report.html").read_text()
    assert "BERT (MLM + NSP)" in page and "bbc-pairs (accuracy)" in page
    lm = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["method"] for r in lm if r["task"] == "lm") == ["BERT (MLM + NSP)", "No NSP (MLM)"]
    assert all(r["val_ppl"] > 1 for r in lm if r["task"] == "lm")
    capsys.readouterr()
    assert main(["study", "nsp", "--quick", "--quiet", "--out", str(out)]) == 0
    assert "4 already finished, 0 run now" in capsys.readouterr().out
