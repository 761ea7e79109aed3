"""``transferlab objectives list|preview``, run in-process."""

from __future__ import annotations

import numpy as np
import pytest

from transferlab.cli import main
from transferlab.data import prepare_corpus
from transferlab.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    rng = np.random.default_rng(0)
    words = "the cat sat on a mat while dogs barked at passing cars and people walked home".split()
    root = tmp_path_factory.mktemp("objcli")
    docs = [" ".join(" ".join(rng.choice(words, rng.integers(4, 10))).capitalize() + "." for _ in range(4))
            for _ in range(30)]
    (root / "c.txt").write_text("\n\n".join(docs), encoding="utf-8")
    tok = Tokenizer.train([str(root / "c.txt")], kind="wordpiece", vocab_size=200)
    prepare_corpus([str(root / "c.txt")], tok, root / "data", val_fraction=0.1, workers=0, progress=False)
    return root / "data"


def test_list_shows_every_objective_and_its_settings(capsys):
    assert main(["objectives", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("mlm:", "nsp:", "electra:", "clm:", "denoise:", "span-corruption:", "plm:", "mtlm:", "mass:"):
        assert name in out
    assert "mask_prob=0.15" in out and "Fraction of maskable tokens picked for prediction." in out
    assert "noise=['infill', 'permute']" in out and "disc_weight=50.0" in out


def test_list_unknown_objective_is_a_one_line_error(capsys):
    assert main(["objectives", "list", "bertt"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown objective 'bertt'") and err.count("\n") == 1


def test_preview_mlm_and_nsp(prepared, capsys):
    assert main(["objectives", "preview", "--data", str(prepared), "--objective", "mlm", "mask_prob=0.3"]) == 0
    out = capsys.readouterr().out
    assert out.count("--- example") == 2 and "input:   [CLS]" in out and "[MASK]" in out
    assert "targets: " in out and "n_targets" in out
    assert main(["objectives", "preview", "--data", str(prepared), "--objective", "mlm+nsp", "--examples", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count("next sentence:") == 3 and "token_type_ids" in out


def test_preview_plm_mtlm_and_mass(prepared, capsys):
    assert main(["objectives", "preview", "--data", str(prepared), "--objective", "plm", "--seq-len", "36"]) == 0
    out = capsys.readouterr().out
    assert out.count("order:   ") == 2 and "[MASK]" in out and "target_index" in out
    order = out.split("order:   ")[1].splitlines()[0].split(" -> ")
    assert 4 <= len(order) <= 6 and all(0 < int(x.split(":")[0]) < 35 for x in order)  # 1/6 of 34 content tokens
    assert main(["objectives", "preview", "--data", str(prepared), "--objective", "mtlm", "seq2seq_weight=1",
                 "bidirectional_weight=0", "l2r_weight=0", "r2l_weight=0"]) == 0
    assert "attention mode (this batch): seq2seq" in capsys.readouterr().out
    assert main(["objectives", "preview", "--data", str(prepared), "--objective", "mass", "--seq-len", "22"]) == 0
    out = capsys.readouterr().out
    assert out.count("target:  ") == 2 and "n_targets 20" in out and "decoder_position_ids" in out


def test_preview_bad_setting_is_a_one_line_error(prepared, capsys):
    assert main(["objectives", "preview", "--data", str(prepared), "--objective", "mlm", "mask_rate=0.3"]) == 2
    assert capsys.readouterr().err.startswith("error: mlm: unknown setting 'mask_rate'")
    assert main(["objectives", "preview", "--data", str(prepared), "--objective", "mlm", "mask_prob"]) == 2
    assert "expected key=value" in capsys.readouterr().err
