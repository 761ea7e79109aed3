"""`transferlab curves`: several runs' validation curves in one table and plot; bad input errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from transferlab.cli import main
from transferlab.errors import DataError
from transferlab.training.curves import read_run


def _run(folder: Path, vals: list[float], step_s: float = 2.0) -> Path:
    folder.mkdir(parents=True)
    rows = []
    for i, v in enumerate(vals, 1):
        rows.append({"split": "train", "loss": v + 0.1, "step": 10 * i, "tokens": 40960 * i, "elapsed_s": step_s * 10 * i})
        rows.append({"split": "validation", "step": 10 * i, "tokens": 40960 * i, "val_loss": v, "val_mlm_acc": 0.1 * i})
    (folder / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return folder


def test_read_run_takes_the_clock_from_train_rows(tmp_path):
    c = read_run(_run(tmp_path / "a", [7.0, 6.0, 5.0], step_s=3.0))
    assert c.label == "a" and c.steps == [10, 20, 30] and c.val_loss == [7.0, 6.0, 5.0] and c.final == 5.0
    assert c.minutes == pytest.approx([0.5, 1.0, 1.5]) and c.tokens[-1] == 122880


def test_cli_table_and_plot(tmp_path, capsys):
    a, b = _run(tmp_path / "learned", [7.0, 6.5, 6.2]), _run(tmp_path / "rope", [6.8, 5.5, 4.9])
    png = tmp_path / "curves.png"
    assert main(["curves", str(a), str(b), "--label", "learned", "--label", "rotary", "--reference", "unigram=6.739",
                 "--x", "minutes", "--out", str(png)]) == 0
    out = capsys.readouterr().out
    rows = {l.split("|")[1].strip(): l for l in out.splitlines() if l.startswith("| ") and "run" not in l}
    assert set(rows) == {"learned", "rotary"}
    assert "| 6.200 |" in rows["learned"] and "-0.539" in rows["learned"]  # 6.2 - 6.739
    assert "| 4.900 |" in rows["rotary"] and f"{math.exp(4.9):,.0f}" in rows["rotary"] and "30.0%" in rows["rotary"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_input(tmp_path, capsys):
    assert main(["curves", str(tmp_path / "nope")]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err
    a = _run(tmp_path / "a", [7.0])
    assert main(["curves", str(a), "--reference", "unigram"]) == 2
    assert "expected NAME=LOSS" in capsys.readouterr().err
    assert main(["curves", str(a), "--label", "x", "--label", "y"]) == 2
    assert "2 label(s) for 1 run(s)" in capsys.readouterr().err
    (tmp_path / "b").mkdir()
    # a row torn by a kill is skipped (outputs.read_jsonl), not fatal: the valid rows still read
    (tmp_path / "b" / "metrics.jsonl").write_text(
        '{"split": "train", "loss": 1.0, "step": 1}\n{oops\n'
        '{"split": "validation", "val_loss": 2.0, "step": 2, "tokens": 10}\n{"split": "valid')
    assert read_run(tmp_path / "b").val_loss == [2.0]
    assert "torn" in capsys.readouterr().err
    (tmp_path / "b" / "metrics.jsonl").write_text('{"split": "train", "loss": 1.0, "step": 1}\n')
    with pytest.raises(DataError, match="no validation rows"):
        read_run(tmp_path / "b")


def _objective_run(folder: Path, val: dict) -> Path:
    """A run folder with one train row and one validation row shaped like the trainer's."""
    folder.mkdir(parents=True)
    rows = [{"split": "train", "loss": 9.0, "step": 10, "tokens": 4096, "elapsed_s": 5.0},
            {"split": "validation", "step": 10, "tokens": 4096, **val}]
    (folder / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return folder


# rows as the trainer writes them: nsp's loss = mlm + nsp; ELECTRA's = gen + 50 x rtd
MLM = {"val_loss": 7.1, "val_mlm_loss": 7.1, "val_mlm_acc": 0.05}
NSP = {"val_loss": math.log(3477), "val_mlm_loss": math.log(1740), "val_nsp_loss": math.log(3477) - math.log(1740),
       "val_mlm_acc": 0.04, "val_nsp_acc": 0.5}
ELECTRA = {"val_loss": math.log(1.2e12), "val_gen_loss": math.log(1245), "val_rtd_loss": 0.415}


@pytest.mark.parametrize("with_ppl", [True, False], ids=["val_ppl logged", "older rows without val_ppl"])
def test_perplexity_is_that_of_the_lm_part_of_each_objective(tmp_path, capsys, with_ppl):
    from transferlab.objectives import objective_class, objective_names
    from transferlab.training import curves

    # the copy kept torch-free agrees with the objectives' own LM-loss metrics
    lm = {objective_class(n).lm_loss_metric for n in objective_names()} - {None}
    assert set(curves.LM_LOSS_METRICS) == lm
    runs = {}
    for name, val, ppl in (("mlm", MLM, math.exp(7.1)), ("nsp", NSP, 1740.0), ("electra", ELECTRA, 1245.0)):
        row = dict(val, **({"val_ppl": ppl} if with_ppl else {}))
        runs[name] = (_objective_run(tmp_path / name, row), ppl)
    for name, (folder, ppl) in runs.items():
        assert read_run(folder).val_ppl == [pytest.approx(ppl)], name
    assert main(["curves", *(str(f) for f, _ in runs.values())]) == 0
    out = capsys.readouterr().out
    cells = {l.split("|")[1].strip(): [c.strip() for c in l.split("|")[1:-1]] for l in out.splitlines()
             if l.startswith("| ") and "run" not in l}
    assert cells["mlm"][4] == f"{math.exp(7.1):,.0f}"
    assert cells["nsp"][4] == "1,740"  # not exp(val_loss) = 3,477
    assert cells["electra"][4] == "1,245"  # not 1.2e12
    assert cells["nsp"][3] == f"{math.log(3477):.3f}"  # the loss column is still the whole objective's


def test_small_perplexities_keep_two_decimals(tmp_path, capsys):
    run = _objective_run(tmp_path / "tiny", {"val_loss": 0.2, "val_clm_loss": 0.2})
    assert main(["curves", str(run)]) == 0
    assert f"| {math.exp(0.2):.2f} |" in capsys.readouterr().out
