"""`transferlab curves` in the one CLI grammar: --config FILE, generated flags, key=value overrides
after the run folders (the table and plot themselves: tests/training/test_curves.py)."""

from __future__ import annotations

import json
from pathlib import Path

from transferlab.cli import build_parser, config_from_args, main
from transferlab.commands.curves import CurvesSettings, _split_overrides


def _run(folder: Path) -> Path:
    folder.mkdir(parents=True)
    rows = [{"step": 10 * i, "split": "val", "loss": 7.0 - i, "elapsed_s": 20.0 * i, "tokens_per_s": 1.0,
             "tokens": 4096 * i} for i in (1, 2)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_config_file_flags_and_overrides(tmp_path):
    f = tmp_path / "curves.yaml"
    f.write_text("runs: [a, b]\nx: step\ntitle: from the file\n")
    ns = build_parser().parse_args(["curves", "--config", str(f), "--title", "flag", "curves.x=minutes"])
    ns.runs, ns.overrides = _split_overrides(ns.runs)
    ns.runs = ns.runs or None
    s = config_from_args(ns, CurvesSettings, "curves")
    assert (s.runs, s.x, s.title, s.label) == (["a", "b"], "minutes", "flag", [])


def test_overrides_follow_the_runs_and_a_run_is_required(tmp_path, capsys):
    a = _run(tmp_path / "a")
    png = tmp_path / "c.png"
    assert main(["curves", str(a), "x=step", f"out={png}", "title=t"]) == 0
    assert png.is_file() and "| a |" in capsys.readouterr().out
    assert _split_overrides(["runs/x=1", "x=step", "lr=3"]) == (["runs/x=1", "lr=3"], ["x=step"])
    assert main(["curves"]) == 2
    assert "give at least one RUN" in capsys.readouterr().err
    assert main(["curves", str(a), "x=sideways"]) == 2
