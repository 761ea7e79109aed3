"""Objective ``bilm`` (objectives/bilm.py): ELMo's joint forward + backward LM loss through one
softmax, by hand; padding; errors; ``pretrain`` end to end with bit-identical resume, the cost
report, features on the result; and a golden loss trajectory."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from transferlab.config import ModelConfig, get_preset
from transferlab.errors import ConfigError
from transferlab.models import build_model
from transferlab.models.elmo import set_token_characters
from transferlab.objectives import TokenizerIds, build_objective
from transferlab.training.config import TrainConfig
from transferlab.training.loop import Trainer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny import GOLDEN_V, golden_shards, prepared_data  # noqa: E402

SP = TokenizerIds(40, pad_token_id=0, eos_token_id=1)


def elmo_cfg(vocab: int = 40, token_input: str = "embedding", **kw) -> ModelConfig:
    family = {"cell_size": 24, "token_input": token_input, "char_dim": 4, "max_chars": 8,
              "filters": [[1, 4], [2, 6], [3, 6]], "highway_layers": 1}
    return ModelConfig(family="elmo", vocab_size=vocab, d_model=16, n_layers=2, position="none",
                       tie_embeddings=token_input == "embedding", lm_head_bias=True, pad_token_id=0, eos_token_id=1,
                       heads={"lm": {"type": "bilm_softmax"}}, family_options=family,
                       **{"dropout": 0.0, **kw}).validate()


def test_loss_equals_a_hand_computation():
    ob = build_objective("bilm", SP)
    torch.manual_seed(0)
    model = build_model(elmo_cfg())
    batch = ob.collate([np.array([5, 9, 3, 7, 2]), np.array([4, 8, 6])], np.random.default_rng(0))
    assert batch["input_ids"].tolist() == [[5, 9, 3, 7, 2], [4, 8, 6, 0, 0]]
    assert int(batch["n_targets"]) == 2 * (4 + 2)  # neighbouring real pairs, once per direction
    out = ob.loss(model, batch)
    # by hand: the forward half at t scores token t+1, the backward half at t scores t-1, one softmax
    with torch.no_grad():
        W, b = model.heads["lm"].output_weight, model.heads["lm"].bias
        nll_f = nll_b = 0.0
        for r, n in ((0, 5), (1, 3)):
            h = model.backbone(input_ids=batch["input_ids"][r:r + 1, :n]).last_hidden_state[0]  # unpadded
            fwd, bwd = h[:, :8], h[:, 8:]
            ids = batch["input_ids"][r, :n]
            lf = F.log_softmax(fwd @ W.T + b, -1)
            lb = F.log_softmax(bwd @ W.T + b, -1)
            nll_f -= sum(float(lf[t, ids[t + 1]]) for t in range(n - 1))
            nll_b -= sum(float(lb[t, ids[t - 1]]) for t in range(1, n))
    assert out.loss_sum.item() == pytest.approx(nll_f + nll_b, rel=1e-5)
    assert out.metrics["fwd_loss"] == pytest.approx(nll_f / 6, rel=1e-5)
    assert out.metrics["bwd_loss"] == pytest.approx(nll_b / 6, rel=1e-5)
    assert out.metrics["bilm_loss"] == pytest.approx((nll_f + nll_b) / 12, rel=1e-5)
    assert out.metrics["fwd_ppl"] == pytest.approx(math.exp(nll_f / 6), rel=1e-4)
    assert out.metrics["bwd_ppl"] == pytest.approx(math.exp(nll_b / 6), rel=1e-4)
    assert tuple(out.metrics) == ob.metric_names and ob.lm_loss_metric is None and ob.sparse_targets


def test_windows_make_every_token_a_target_once_per_direction():
    ob = build_objective("bilm", SP)
    shards = golden_shards()
    ds = ob.dataset(shards, 16)
    assert all(len(ds[i]) == 16 for i in range(len(ds)))
    assert ds[0][-1] == ds[1][0]  # windows overlap by one token, as clm's
    with pytest.raises(ConfigError, match="bilm needs seq_len >= 2"):
        ob.dataset(shards, 1)


def test_errors_name_what_fits(tmp_path):
    ob = build_objective("bilm", SP)
    with pytest.raises(ConfigError, match=r"objective 'bilm' .* needs model.family=elmo \(presets elmo-tiny"):
        ob.check_model(get_preset("gpt-mini"))
    with pytest.raises(ConfigError, match="needs model.heads.lm = {'type': 'bilm_softmax'}"):
        ob.check_model(elmo_cfg().replace(heads={"classification": {}}))
    with pytest.raises(ConfigError, match="model.vocab_size=40 is smaller"):
        build_objective("bilm", TokenizerIds(50, pad_token_id=0, eos_token_id=1)).check_model(elmo_cfg())
    # a char-input model and an objective without a vocabulary to read characters from
    with pytest.raises(ConfigError, match="character table is empty and the objective has no tokenizer"):
        ob.wrap_model(build_model(elmo_cfg(token_input="chars")))
    with pytest.raises(ConfigError, match="unknown setting 'mask_prob'"):
        build_objective("bilm", SP, mask_prob=0.1)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Prepared shards of a tiny corpus (a 300-token WordPiece tokenizer trained in-process)."""
    return prepared_data(tmp_path_factory.mktemp("bilm"))


def test_pretrain_refuses_objectives_that_do_not_fit_elmo(tmp_path, capsys, data):
    from transferlab.cli import main

    base = ["--data", str(data), "--max-steps", "1", "--batch-size", "2", "--seq-len", "16", "--no-energy",
            "train.progress=false", "train.tensorboard=false"]
    rc = main(["pretrain", "--preset", "elmo-tiny", "--objective", "mlm", "--out", str(tmp_path / "a"), *base])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--objective bilm" in err[0] and "elmo" in err[0]
    rc = main(["pretrain", "--preset", "gpt-mini", "--objective", "bilm", "--out", str(tmp_path / "b"), *base])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "needs model.family=elmo" in err[0]


TINY_ELMO = ["model.d_model=16", "model.family_options.cell_size=24", "model.family_options.max_chars=8",
             "model.family_options.filters=[[1,4],[2,6],[3,6]]", "model.family_options.char_dim=4"]


def test_pretrain_end_to_end_cost_and_features(tmp_path, capsys, data):
    from transferlab.cli import main
    from transferlab.cost import estimate_flops
    from transferlab.models.model import from_pretrained

    out = tmp_path / "run"
    rc = main(["pretrain", "--preset", "elmo-tiny", "--objective", "bilm", "--data", str(data), "--out", str(out),
               "--max-steps", "4", "--batch-size", "4", "--seq-len", "16", "--dtype", "fp32", "--eval-every", "2",
               "--no-energy", *TINY_ELMO, "train.progress=false", "train.tensorboard=false"])
    assert rc == 0, capsys.readouterr().err
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    for split in ("train", "val"):
        last = [r for r in rows if r["split"] == split][-1]
        assert all(k in last for k in ("fwd_loss", "bwd_loss", "fwd_ppl", "bwd_ppl", "bilm_loss")), last
    model = from_pretrained(out / "model")
    cfg = model.config
    assert cfg.family == "elmo" and cfg.heads == {"lm": {"type": "bilm_softmax"}}
    assert bool(model.backbone.char_table[:, 0].any())  # filled from the data's tokenizer, saved
    # the cost report bills exactly the rows that reach the softmax: 2 (T - 1) per full window
    report = json.loads((out / "report.json").read_text())
    assert report["flops"] == pytest.approx(4 * 4 * estimate_flops(cfg, 16, "train", n_predicted=2 * 15), rel=1e-12)
    capsys.readouterr()
    texts = tmp_path / "t.txt"
    texts.write_text("the cat sat on the mat\na dog ran home\n", encoding="utf-8")
    rc = main(["features", "--model", str(out / "model"), "--input", str(texts), "--layer", "all", "--pooling", "mean",
               "--output", str(tmp_path / "f.npy")])
    assert rc == 0
    assert np.load(tmp_path / "f.npy").shape == (2, 3, 16)  # L + 1 layers of [forward; backward]


def test_resume_is_bit_identical(tmp_path, data):
    from transferlab.data import TokenShards

    shards = TokenShards(data, "train")
    tok = shards.tokenizer

    def make(out, **kw):
        ob = build_objective("bilm", tok)
        torch.manual_seed(0)
        model = build_model(elmo_cfg(len(tok), "chars", dropout=0.1))
        cfg = TrainConfig(batch_size=4, seq_len=16, max_steps=6, save_every=2, eval_every=3, lr=1e-2, warmup=0.2,
                          log_every=1, dtype="fp32", seed=0, progress=False, tensorboard=False, num_threads=1)
        return Trainer(model, ob, ob.dataset(shards, 16), cfg, out, val_data=ob.dataset(TokenShards(data, "validation"), 16),
                       **kw)

    full = make(tmp_path / "a")
    full.fit()

    class Killed(Exception):
        pass

    def kill(rec):
        if rec["step"] == 3:  # after the checkpoint at 2
            raise Killed

    with pytest.raises(Killed):
        make(tmp_path / "b", on_step=[kill]).fit()
    resumed = make(tmp_path / "b")
    assert resumed.fit(resume=True)["steps"] == 6
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k

    def strip(p):
        return [{k: v for k, v in json.loads(x).items() if k not in ("elapsed_s", "tokens_per_s")}
                for x in p.read_text().splitlines()]

    assert strip(tmp_path / "a/metrics.jsonl") == strip(tmp_path / "b/metrics.jsonl")


# ---------------------------------------------------------------------------------- golden losses
#: as tests/parity/test_golden_losses.py: fixed seed, 5 steps, fp32, deterministic; regenerate with
#: ``python tests/objectives/test_bilm.py`` when a change is intended; the token-embedding biLM is
#: a row of the shared table (``bilm``), the char-CNN input is pinned here
GOLDEN = {
    "chars": [4.564348, 4.564344, 4.560344, 4.556762, 4.552884],
}


def trajectory(token_input: str, out: Path) -> list[float]:
    torch.use_deterministic_algorithms(True)
    try:
        sp = TokenizerIds(GOLDEN_V, pad_token_id=0, eos_token_id=1)
        ob = build_objective("bilm", sp)
        torch.manual_seed(0)
        model = build_model(elmo_cfg(GOLDEN_V, token_input))
        set_token_characters(model, [f"t{i}" for i in range(GOLDEN_V)])
        ob.check_model(model.config)
        cfg = TrainConfig(batch_size=4, seq_len=32, max_steps=5, lr=1e-2, warmup=0.2, eval_every=0, save_every=0,
                          log_every=1, dtype="fp32", seed=0, progress=False, tensorboard=False, num_threads=1)
        Trainer(model, ob, ob.dataset(golden_shards(), cfg.seq_len), cfg, out).fit()
    finally:
        torch.use_deterministic_algorithms(False)
    return [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"train"' in x]


@pytest.mark.parametrize("token_input", list(GOLDEN))
def test_golden_loss_trajectory(token_input, tmp_path):
    losses = trajectory(token_input, tmp_path)
    assert len(losses) == 5
    np.testing.assert_allclose(losses, GOLDEN[token_input], rtol=0, atol=2e-4, err_msg=token_input)


if __name__ == "__main__":  # regenerate: python tests/objectives/test_bilm.py
    import tempfile

    torch.set_num_threads(1)
    print("GOLDEN = {")
    for n in GOLDEN:
        with tempfile.TemporaryDirectory() as d:
            print(f"    {n!r}: [{', '.join(f'{x:.6f}' for x in trajectory(n, Path(d)))}],")
    print("}")
