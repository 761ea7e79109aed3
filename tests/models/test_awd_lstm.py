"""AWD-LSTM: the weight-dropped LSTM against torch.nn.LSTM and the reference formula, the
dropouts, tying, decoding, FLOPs, clm (forward and backward), resume, and the clear errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

# tests/ holds tiny.py; pytest puts it on sys.path, a script run (regenerating GOLDEN_AWD) does not
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny import OBJ_V, bert_ids, gpt_ids, tcfg, windows  # noqa: E402
from transferlab.config import get_preset  # noqa: E402
from transferlab.errors import ConfigError  # noqa: E402
from transferlab.models.lstm import LockedDropout, WeightDropLSTM, embedding_dropout, flip_rows  # noqa: E402
from transferlab.models.model import TransferModel  # noqa: E402


def _cfg(**opts):
    o = {"hidden_size": 24, **opts}
    return get_preset("awd-lstm-tiny", vocab_size=OBJ_V, d_model=16, eos_token_id=5, bos_token_id=5,
                      family_options=o)


def _model(seed: int = 0, **opts) -> TransferModel:
    torch.manual_seed(seed)
    return TransferModel(_cfg(**opts))


def _cell_loop(x, w_ih, w_hh, b_ih, b_hh, h=None, c=None):
    """The LSTM equations step by step (gates i, f, g, o), the reference for the fused kernel."""
    B, T, _ = x.shape
    H = w_hh.shape[1]
    h = x.new_zeros(B, H) if h is None else h
    c = x.new_zeros(B, H) if c is None else c
    ys = []
    for t in range(T):
        gates = x[:, t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh  # (B, 4H)
        i, f, g, o = gates.chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        ys.append(h)
    return torch.stack(ys, 1), h, c


@pytest.mark.parametrize("train", [False, True])
def test_weight_drop_lstm_without_dropout_equals_nn_lstm(train):
    torch.manual_seed(0)
    ref = nn.LSTM(7, 11, batch_first=True)
    layer = WeightDropLSTM(7, 11, weight_p=0.0)
    layer.load_state_dict(ref.state_dict())
    layer.train(train), ref.train(train)
    x = torch.randn(3, 9, 7, requires_grad=True)
    h0 = (torch.randn(1, 3, 11), torch.randn(1, 3, 11))
    y, (h, c) = layer(x, h0)
    y_ref, (h_ref, c_ref) = ref(x, h0)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    torch.testing.assert_close((h, c), (h_ref, c_ref), rtol=0, atol=0)
    # and both equal the equations written out
    y_loop, h_loop, _ = _cell_loop(x, *[p.detach() for p in ref.parameters()], h0[0][0], h0[1][0])
    torch.testing.assert_close(y, y_loop, rtol=1e-5, atol=1e-6)
    # the gradients agree too
    up = torch.randn_like(y)
    gx, = torch.autograd.grad((y * up).sum(), x, retain_graph=True)
    gx_ref, = torch.autograd.grad((y_ref * up).sum(), x)
    torch.testing.assert_close(gx, gx_ref, rtol=0, atol=0)


def test_weight_drop_matches_the_reference_formula():
    p = 0.5
    layer = WeightDropLSTM(5, 8, weight_p=p).train()
    x = torch.randn(2, 6, 5)
    torch.manual_seed(3)
    y, _ = layer(x)
    torch.manual_seed(3)  # the same draw: the one mask of this forward
    w = layer.dropped_weight_hh().detach()
    raw = layer.weight_hh_l0.detach()
    dropped = w == 0
    assert 0.3 < dropped.float().mean() < 0.7
    torch.testing.assert_close(w[~dropped], raw[~dropped] / (1 - p))  # kept entries scaled by 1/(1-p)
    # one mask for every time step: the reference loop with that single matrix gives the output
    y_ref, _, _ = _cell_loop(x, layer.weight_ih_l0.detach(), w, layer.bias_ih_l0.detach(), layer.bias_hh_l0.detach())
    torch.testing.assert_close(y.detach(), y_ref, rtol=1e-5, atol=1e-6)
    # a fresh mask per forward, none in eval mode
    y2, _ = layer(x)
    assert not torch.allclose(y, y2)
    layer.eval()
    y_eval, _ = layer(x)
    y_plain, _, _ = _cell_loop(x, *[q.detach() for q in layer.parameters()])
    torch.testing.assert_close(y_eval.detach(), y_plain, rtol=1e-5, atol=1e-6)
    # the gradient reaches the raw matrix through the mask only
    layer.train()
    torch.manual_seed(4)
    layer(x)[0].sum().backward()
    torch.manual_seed(4)
    mask = layer.dropped_weight_hh() == 0
    assert bool((layer.weight_hh_l0.grad[mask] == 0).all()) and bool((layer.weight_hh_l0.grad[~mask] != 0).any())


def test_locked_dropout_draws_one_mask_per_sequence():
    drop = LockedDropout(0.5).train()
    x = torch.ones(4, 10, 32)
    y = drop(x)
    assert set(y.unique().tolist()) <= {0.0, 2.0}
    assert torch.equal(y, y[:, :1].expand_as(y))  # the same mask at every time step
    assert not torch.equal(y[0], y[1])  # another one per sequence
    assert torch.equal(drop.eval()(x), x)


def test_embedding_dropout_drops_whole_words():
    torch.manual_seed(0)
    emb = nn.Embedding(50, 8)
    ids = torch.randint(0, 50, (6, 40))
    torch.manual_seed(1)
    y = embedding_dropout(emb, ids, 0.5, training=True)
    zero = (y == 0).all(-1)  # (B, T): dropped positions
    assert 0 < zero.float().mean() < 1
    for w in ids.unique():  # a word is dropped everywhere in the batch or nowhere
        assert zero[ids == w].all() or not zero[ids == w].any()
    kept = ~zero
    torch.testing.assert_close(y[kept], emb(ids)[kept] * 2)  # scaled by 1/(1-p)
    # the same as looking up the masked table (the formulation of Gal & Ghahramani / fastai)
    torch.manual_seed(1)
    mask = emb.weight.new_empty(50).bernoulli_(0.5) / 0.5
    torch.testing.assert_close(y, F.embedding(ids, emb.weight * mask[:, None]))
    assert torch.equal(embedding_dropout(emb, ids, 0.5, training=False), emb(ids))


def test_flip_rows_reverses_the_real_tokens_only():
    x = torch.tensor([[1, 2, 3, 0], [4, 5, 6, 7]])
    m = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    assert flip_rows(x, m).tolist() == [[3, 2, 1, 0], [7, 6, 5, 4]]
    assert torch.equal(flip_rows(flip_rows(x, m), m), x)


def test_shape_tying_layer_groups_and_options_round_trip(tmp_path):
    from transferlab.models.model import from_pretrained
    from transferlab.training.optim import param_groups

    model = _model()
    bb = model.backbone
    assert [(m.input_size, m.hidden_size) for m in bb.layers] == [(16, 24), (24, 24), (24, 16)]
    assert model.heads["lm"].output_weight is bb.embed_tokens.weight  # tied: one tensor
    assert sum(p is bb.embed_tokens.weight for p in model.parameters()) == 1
    groups = bb.layer_groups()
    assert len(groups) == 5 and groups[-1] == []
    assert {id(p) for g in groups for p in g} == {id(p) for p in bb.parameters()}
    # discriminative learning rates: eta / 2.6 per layer down
    lr, decay = 1e-2, 1 / 2.6
    by_id = {id(p): g["lr"] for g in param_groups(model, 0.0, lr, layer_lr_decay=decay) for p in g["params"]}
    for depth, group in enumerate(groups[:-1]):
        for p in group:
            assert by_id[id(p)] == pytest.approx(lr * decay ** (4 - depth))
    assert all(by_id[id(p)] == lr for n, p in model.named_parameters() if n.startswith("heads.") and
               p is not bb.embed_tokens.weight)
    model.save_pretrained(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert saved["family"] == "awd-lstm" and saved["family_options"]["weight_p"] == 0.5
    again = from_pretrained(tmp_path / "m")
    ids = torch.randint(5, OBJ_V, (2, 7))
    torch.testing.assert_close(again(input_ids=ids).logits, model.eval()(input_ids=ids).logits)
    out = model(input_ids=ids, output_hidden_states=True)
    assert len(out.hidden_states) == bb.num_hidden_states == 2  # embeddings + the d_model-wide last layer
    assert _model(hidden_size=16).backbone.num_hidden_states == 4
    with pytest.raises(ConfigError, match=r"family_options.weight_p: expected a finite number in \[0, 1\)"):
        _cfg(weight_p=1.0)


def test_decode_continues_the_full_forward_and_generate_is_the_greedy_loop():
    model = _model().eval()
    bb, head = model.backbone, model.heads["lm"]
    ids = torch.randint(5, OBJ_V, (2, 6))
    with torch.no_grad():
        full = bb(input_ids=ids).last_hidden_state
        cache = bb.new_cache(2, 16, torch.float32, torch.device("cpu"))
        steps = [bb.decode(ids[:, :3], None, None, cache)] + [bb.decode(ids[:, t:t + 1], None, None, cache)
                                                                for t in range(3, 6)]
        torch.testing.assert_close(torch.cat(steps, 1), full)
        assert cache.seq_len == 6
        cache.reorder(torch.tensor([1, 1]))
        nxt = bb.decode(torch.tensor([[9], [9]]), None, None, cache)
        alone = bb(input_ids=torch.cat([ids[1:], torch.tensor([[9]])], 1)).last_hidden_state[:, -1]
        torch.testing.assert_close(nxt[:, 0], alone.expand(2, -1))
        # a left-padded prompt leaves its row's state where it was
        padded = torch.cat([torch.zeros(1, 2, dtype=torch.long), ids[:1, :4]], 1)
        mask = torch.tensor([[0, 0, 1, 1, 1, 1]])
        c2 = bb.new_cache(1, 16, torch.float32, torch.device("cpu"))
        got = bb.decode(padded, mask, None, c2)[:, -1]
        torch.testing.assert_close(got, bb(input_ids=ids[:1, :4]).last_hidden_state[:, -1])

    prompt = ids[:1, :4]
    got = model.generate(prompt, max_new_tokens=6, do_sample=False)
    with torch.no_grad():  # by hand: the layers over the prompt, then feed back the argmax
        state = [None] * 3

        def run(x):
            h = bb.embed_tokens(x)
            for i, layer in enumerate(bb.layers):
                h, state[i] = layer(h, state[i])
            return h

        y, out = run(prompt), prompt
        for _ in range(6):
            nxt = head(y[:, -1:]).argmax(-1)
            out = torch.cat([out, nxt], 1)
            if int(nxt) == model.config.eos_token_id:
                break
            y = run(nxt)
    assert got.tolist() == out.tolist()
    beams = model.generate(prompt, max_new_tokens=4, num_beams=3, do_sample=False)
    assert beams.shape[0] == 1 and beams.shape[1] <= 8


def test_flops_equal_the_measured_count():
    from torch.utils.flop_counter import FlopCounterMode

    from transferlab.cost import estimate_flops

    model = _model().eval()
    cfg, T = model.config, 9
    bb, head = model.backbone, model.heads["lm"]
    x = torch.randint(5, OBJ_V, (1, T))
    with FlopCounterMode(display=False) as fc, torch.no_grad():  # the cell-by-cell computation
        h = bb.embed_tokens(x)
        for layer in bb.layers:
            h = _cell_loop(h, *layer.parameters())[0]
        head(h)
    measured = fc.get_total_flops()
    assert estimate_flops(cfg, T, "forward") == measured == model.estimate_flops(T, mode="forward")
    assert estimate_flops(cfg, T, "train") == 3 * measured
    assert estimate_flops(cfg, 5, "decode") == estimate_flops(cfg, 1, "forward")
    # and the fused kernel does the same matmuls: FlopCounterMode sees it as one op it cannot
    # count, so the analytic count above is what the cost report uses
    cls = cfg.replace(heads={"classification": {"num_labels": 3, "pooling": "ulmfit"}})
    with FlopCounterMode(display=False) as fc2, torch.no_grad():
        m = TransferModel(cls).eval()
        h = m.backbone.embed_tokens(x)
        for layer in m.backbone.layers:
            h = _cell_loop(h, *layer.parameters())[0]
        from transferlab.models.heads import pool

        m.heads["classification"](pool(cls, h, None, "ulmfit"))
    assert estimate_flops(cls, T, "forward") == fc2.get_total_flops()


def test_clm_pretrains_forward_and_backward_and_mlm_is_refused():
    from transferlab.objectives import build_objective

    torch.manual_seed(0)
    ob = build_objective("clm", gpt_ids())
    model = _model()
    ob.check_model(model.config)
    batch = ob.collate(windows(4, 12), np.random.default_rng(0))
    out = ob.loss(ob.wrap_model(model), batch)
    assert torch.isfinite(out.loss_sum) and int(batch["n_targets"]) == 44
    # backward LM by reversed windows: the same as a model that reads right to left itself
    rev = build_objective("clm", gpt_ids(), reverse=True)
    rb = rev.collate(windows(4, 12), np.random.default_rng(0))
    assert torch.equal(rb["input_ids"], batch["input_ids"].flip(1))
    model.eval()
    bwd = TransferModel(_cfg(backwards=True)).eval()
    bwd.load_state_dict(model.state_dict())
    with torch.no_grad():
        a = rev.loss(rev.wrap_model(model), rb).loss_sum
        b = ob.loss(ob.wrap_model(bwd), batch).loss_sum
    torch.testing.assert_close(a, b)
    with pytest.raises(ConfigError, match="reads backwards already"):
        rev.check_model(bwd.config)
    with pytest.raises(ConfigError, match="does not continue text"):
        bwd.generate(torch.tensor([[7, 8]]), max_new_tokens=2)
    with pytest.raises(ConfigError, match=r"objective 'mlm' needs an encoder .*got model.family=awd-lstm"):
        build_objective("mlm", bert_ids()).check_model(model.config)


def test_mlm_on_an_lstm_preset_is_one_line(tmp_path, capsys):
    from tiny import prepared_data
    from transferlab.cli import main

    (tmp_path / "d").mkdir()
    data = prepared_data(tmp_path / "d")
    rc = main(["pretrain", "--preset", "awd-lstm-tiny", "--objective", "mlm", "--data", str(data),
               "--out", str(tmp_path / "run"), "--max-steps", "1"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "needs an encoder" in err and "awd-lstm" in err


def test_to_hf_on_an_awd_lstm_is_one_line(tmp_path, capsys):
    from transferlab.cli import main

    _model().save_pretrained(tmp_path / "m")
    rc = main(["convert", "--to-hf", str(tmp_path / "m"), "--out", str(tmp_path / "hf")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "no transformers class" in err and "awd-lstm" in err
    assert not (tmp_path / "hf").exists()


def test_concat_pooling_masks_padding_and_ulmfit_head():
    from transferlab.models.heads import pool

    cfg = _cfg()
    h = torch.randn(2, 5, 16)
    m = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    h_pad = h.clone()
    h_pad[0, 3:] = 100.0  # padding must not reach max or mean
    got = pool(cfg, h_pad, m, "concat")
    assert got.shape == (2, 48)
    ref0 = torch.cat([h[0, 2], h[0, :3].amax(0), h[0, :3].mean(0)])
    torch.testing.assert_close(got[0], ref0)
    torch.testing.assert_close(got[1], torch.cat([h[1, 4], h[1].amax(0), h[1].mean(0)]))
    model = TransferModel(cfg.replace(heads={"classification": {"num_labels": 3, "pooling": "ulmfit"}}))
    head = model.heads["classification"]
    assert isinstance(head.bn1, nn.BatchNorm1d) and head.dense.in_features == 48 and head.classifier.in_features == 50
    assert model(input_ids=torch.randint(5, OBJ_V, (4, 6))).logits.shape == (4, 3)
    model.train()
    assert model(input_ids=torch.randint(5, OBJ_V, (1, 6))).logits.shape == (1, 3)  # an epoch's last, 1-row batch
    plain = TransferModel(cfg.replace(heads={"classification": {"num_labels": 3, "pooling": "concat"}}))
    assert plain.heads["classification"].classifier.in_features == 48


def test_resume_is_bit_identical(tmp_path):
    """All the dropouts (embedding, locked, DropConnect) draw from the restored generators."""
    from transferlab.objectives import build_objective
    from transferlab.training.loop import Trainer

    def make(out, **kw):
        model = _model(seed=0)
        return Trainer(model, build_objective("clm", gpt_ids()), windows(64, 12), tcfg(max_steps=8, save_every=3,
                       seq_len=12), out, **kw)

    full = make(tmp_path / "a")
    full.fit()

    class Killed(Exception):
        pass

    def kill(rec):
        if rec["step"] == 5:
            raise Killed

    with pytest.raises(Killed):
        make(tmp_path / "b", on_step=[kill]).fit()
    resumed = make(tmp_path / "b")
    assert resumed.fit(resume=True)["steps"] == 8
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


def test_bf16_autocast_trains_on_any_cpu():
    # nn.LSTM under CPU bf16 autocast fails without native bf16 (oneDNN); ours falls back to fp32
    from transferlab.models.lstm import cpu_lowp_lstm_supported

    model = _model().train()
    ids = torch.randint(5, OBJ_V, (2, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    assert torch.isfinite(out.loss) and model.backbone.layers[0].weight_hh_l0.grad is not None
    layer = model.backbone.layers[0].eval()
    x = torch.randn(2, 5, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, _ = layer(x)
    if not cpu_lowp_lstm_supported():
        torch.testing.assert_close(y, layer(x)[0])  # the fp32 kernel: the same numbers


#: clm on the golden shards (tests/parity/test_golden_losses.py's setting) with every AWD dropout
#: on: init, embedding/locked dropout, DropConnect, the fused kernel, the loss and the optimizer;
#: regenerate with ``python tests/models/test_awd_lstm.py`` if a change is intended
GOLDEN_AWD = [4.562629, 4.563958, 4.551727, 4.544164, 4.535068]


def _golden_trajectory(out) -> list[float]:
    from tiny import golden_shards, golden_specials
    from transferlab.objectives import build_objective
    from transferlab.training.config import TrainConfig
    from transferlab.training.loop import Trainer

    torch.use_deterministic_algorithms(True)
    try:
        sp = golden_specials("clm")
        objective = build_objective("clm", sp)
        torch.manual_seed(0)
        cfg = get_preset("awd-lstm-tiny", vocab_size=sp.vocab_size, d_model=32, eos_token_id=sp.eos_token_id,
                         family_options={"hidden_size": 48})
        model = TransferModel(cfg)
        train = TrainConfig(batch_size=4, seq_len=32, max_steps=5, lr=1e-2, warmup=0.2, eval_every=0, save_every=0,
                            log_every=1, dtype="fp32", seed=0, progress=False, tensorboard=False, num_threads=1)
        Trainer(model, objective, objective.dataset(golden_shards(), train.seq_len), train, out).fit()
    finally:
        torch.use_deterministic_algorithms(False)
    return [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"train"' in x]


def test_golden_loss_trajectory(tmp_path):
    losses = _golden_trajectory(tmp_path)
    assert len(losses) == 5
    np.testing.assert_allclose(losses, GOLDEN_AWD, rtol=0, atol=2e-4)


if __name__ == "__main__":  # regenerate GOLDEN_AWD: python tests/models/test_awd_lstm.py
    import tempfile

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        print(f"GOLDEN_AWD = [{', '.join(f'{x:.6f}' for x in _golden_trajectory(Path(d)))}]")
