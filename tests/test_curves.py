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
