"""End to end: `transferlab demo --quick` runs the whole paradigm and writes its artefacts."""

import json

import pytest

from transferlab.cli import main


@pytest.mark.slow
# on an AVX2-only CPU (fp32 fine-tuning, no native bf16) it took 556 s beside the rest of the suite
# under -n 2, close to the 600 s default: give it room, it is the one long test
@pytest.mark.timeout(1500)
def test_quick_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    # one table with every method and the cost columns
    for method in ("majority", "tfidf-logreg", "bert-mini (pre-trained)", "bert-mini (from scratch)",
                   "MiniLM-L6 (pre-trained)"):
        assert method in printed, method
    for column in ("accuracy", "energy", "CO2e", "price"):
        assert column in printed, column
    assert "±" in printed  # mean ± std over the two seeds
    # the artefacts
    assert (out / "tokenizer" / "tokenizer.json").exists()
    assert (out / "data" / "meta.json").exists()
    assert (out / "bert-mini-mlm" / "model" / "model.safetensors").exists()
    assert (out / "pretrain_loss_curve.png").exists()
    assert (out / "summary.md").read_text().count("![") >= 2  # loss curve + comparison plots
    rows = [json.loads(line) for line in (out / "compare" / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 5 * 2  # 5 methods x 1 size x 2 seeds
    report = json.loads((out / "bert-mini-mlm" / "report.json").read_text())
    assert report["flops"] > 0 and report["energy_source"] in ("codecarbon", "estimate")
    # rerunning reuses every finished step and cell
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    assert "reusing" in capsys.readouterr().out
    assert len((out / "compare" / "results.jsonl").read_text().splitlines()) == 10
