"""Every pretrain run writes its price tag: report.json with FLOPs, MFU, energy, CO2e and price."""

import json

from transferlab.cli import main
from transferlab.cost import estimate_flops
from transferlab.models import from_pretrained

from tiny import prepared_data


def test_pretrain_writes_a_cost_report(tmp_path, capsys):
    data = prepared_data(tmp_path)
    out = tmp_path / "run"
    rc = main(["pretrain", "--preset", "bert-tiny", "--objective", "mlm", "--data", str(data), "--out", str(out),
               "--max-steps", "3", "--batch-size", "4", "--seq-len", "32", "--dtype", "fp32",
               "--price-per-hour", "2.0", "--no-energy", "train.progress=false", "train.tensorboard=false"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "estimate" in printed  # energy without a power counter is labelled as an estimate
    # exactly one end-of-run line reports time and throughput (the cost block does not repeat it)
    assert sum("tokens/s" in line for line in printed.splitlines()) == 1, printed
    report = json.loads((out / "report.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert report["kind"] == "pretrain"
    assert report["tokens"] == summary["tokens"] == 3 * 4 * 32
    # sparse MLM: the vocabulary projection is billed only for the masked targets, so the FLOPs
    # lie strictly between "no LM head" and "LM head on every position"
    cfg = from_pretrained(out / "model").config
    dense = 3 * 4 * estimate_flops(cfg, 32, "train")
    assert 0 < report["flops"] < dense
    assert report["energy_source"] == "estimate" and report["energy_kwh"] > 0
    assert abs(report["price_usd"] - report["wall_seconds"] / 3600 * 2.0) < 1e-9
    assert 0 < report["mfu"] <= 1
