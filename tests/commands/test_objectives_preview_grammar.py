"""``transferlab objectives preview`` in the one CLI grammar: --config FILE, generated flags,
``preview.KEY=VALUE`` overrides beside the objective's own ``KEY=VALUE`` settings."""

from __future__ import annotations

import pytest

from tiny import prepared_data
from transferlab.cli import main


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return prepared_data(tmp_path_factory.mktemp("preview"), n_docs=30)


def test_config_file_flags_and_preview_overrides(data, tmp_path, capsys):
    f = tmp_path / "preview.yaml"
    f.write_text(f"data: {data}\nobjective: mlm\nexamples: 4\nsettings: [mask_prob=0.3]\n")
    assert main(["objectives", "preview", "--config", str(f), "--examples", "3", "preview.seq_len=24"]) == 0
    out = capsys.readouterr().out
    assert out.count("--- example") == 3 and "[MASK]" in out
    assert main(["objectives", "preview", "--config", str(f), "mask_prob=2"]) == 2  # the objective's own setting
    assert "mask_prob" in capsys.readouterr().err
    assert main(["objectives", "preview", "--objective", "mlm"]) == 2
    assert "missing --data" in capsys.readouterr().err
