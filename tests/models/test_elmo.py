"""The ELMo family (models/elmo.py): the stacked residual biLM against a hand-written cell-by-cell
reference, the directions' causality, padding, the character CNN, FLOPs counted exactly, the
learned scalar mix, save/load, features and fine-tuning through the Backbone contract."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from transferlab.config import ModelConfig, get_preset
from transferlab.errors import ConfigError
from transferlab.models import build_model
from transferlab.models.elmo import (BOC, BOW, EOW, SPECIAL, CharCNN, ElmoBiLM, ElmoOptions, Highway,
                                     set_token_characters, token_characters)
from transferlab.models.model import from_pretrained

V = 120
TOKENS = [f"w{i}" for i in range(V)]


def elmo_config(**opts) -> ModelConfig:
    """A tiny biLM: d_model 16 (8 per direction), 2 layers, LSTMP cells of 24, char CNN."""
    family = {"cell_size": 24, "token_input": "chars", "char_dim": 4, "max_chars": 8,
              "filters": [[1, 4], [2, 6], [3, 6]], "highway_layers": 2, **opts}
    return ModelConfig(family="elmo", vocab_size=V, d_model=16, n_layers=2, dropout=0.0, position="none",
                       tie_embeddings=family["token_input"] == "embedding", lm_head_bias=True,
                       heads={"lm": {"type": "bilm_softmax"}}, family_options=family).validate()


def elmo_model(**opts):
    torch.manual_seed(0)
    model = build_model(elmo_config(**opts))
    set_token_characters(model, TOKENS)
    return model.eval()


# ---------------------------------------------------------------------------------- reference
def lstm_cells(lstm: torch.nn.LSTM, x: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
    """nn.LSTM (one layer, optional projection) written out step by step with its weights."""
    B, T, _ = x.shape
    H, Pr = lstm.hidden_size, lstm.proj_size or lstm.hidden_size
    h = torch.zeros(B, Pr) if h0 is None else h0
    c = torch.zeros(B, H)
    ys = []
    for t in range(T):
        gates = F.linear(x[:, t], lstm.weight_ih_l0, lstm.bias_ih_l0) + F.linear(h, lstm.weight_hh_l0, lstm.bias_hh_l0)
        i, f, g, o = gates.chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        if lstm.proj_size:
            h = F.linear(h, lstm.weight_hr_l0)
        ys.append(h)
    return torch.stack(ys, 1)  # (B, T, Pr)


def reference_bilm(bb: ElmoBiLM, ids: torch.Tensor, h0_grad: bool = False) -> list[torch.Tensor]:
    """The L + 1 layers [forward; backward] of the stacked residual biLM, by hand."""
    x = bb.token_representation(ids)  # (B, T, P)
    residual = bb.config.family_options.residual

    def direction(layers, inp):
        outs = []
        for i, lstm in enumerate(layers):
            h0 = torch.zeros(inp.shape[0], lstm.proj_size or lstm.hidden_size, requires_grad=h0_grad)
            y = lstm_cells(lstm, inp, h0)
            inp = y + inp if residual and i > 0 else y
            outs.append(inp)
        return outs

    fwd = direction(bb.forward_layers, x)
    bwd = [y.flip(1) for y in direction(bb.backward_layers, x.flip(1))]
    return [torch.cat([x, x], -1)] + [torch.cat([f, b], -1) for f, b in zip(fwd, bwd)]


@pytest.mark.parametrize("opts", [{}, {"projection": False, "cell_size": 0}, {"residual": False},
                                  {"token_input": "embedding", "lstm_layers": 3}])
def test_stacked_residual_bilm_equals_the_hand_written_reference(opts):
    model = elmo_model(**opts)
    ids = torch.randint(0, V, (3, 9))
    with torch.no_grad():
        out = model.backbone(input_ids=ids, output_hidden_states=True)
        ref = reference_bilm(model.backbone, ids)
    assert len(out.hidden_states) == model.backbone.num_hidden_states == len(ref)
    for got, want in zip(out.hidden_states, ref):
        assert got.shape == (3, 9, 16)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.last_hidden_state, ref[-1], rtol=1e-5, atol=1e-6)


def test_each_direction_is_causal_in_its_own_direction():
    model = elmo_model()
    ids = torch.randint(0, V, (2, 10))
    k = 5
    changed = ids.clone()
    changed[:, k] = (ids[:, k] + 7) % V
    with torch.no_grad():
        a = model.backbone(input_ids=ids, output_hidden_states=True).hidden_states
        b = model.backbone(input_ids=changed, output_hidden_states=True).hidden_states
    for layer_a, layer_b in zip(a[1:], b[1:]):
        fa, ba = layer_a.chunk(2, -1)
        fb, bb = layer_b.chunk(2, -1)
        torch.testing.assert_close(fa[:, :k], fb[:, :k], rtol=0, atol=0)  # forward: t < k never sees k
        torch.testing.assert_close(ba[:, k + 1:], bb[:, k + 1:], rtol=0, atol=0)  # backward: t > k never sees k
        assert not torch.allclose(fa[:, k:], fb[:, k:]) and not torch.allclose(ba[:, :k + 1], bb[:, :k + 1])


@pytest.mark.parametrize("side", ["right", "left"])
def test_padding_never_reaches_real_positions(side):
    model = elmo_model()
    rows = [torch.randint(1, V, (n,)) for n in (9, 4, 6)]
    T = 9
    ids = torch.zeros(3, T, dtype=torch.long)
    mask = torch.zeros(3, T, dtype=torch.long)
    for r, x in enumerate(rows):
        sl = slice(0, len(x)) if side == "right" else slice(T - len(x), T)
        ids[r, sl], mask[r, sl] = x, 1
    with torch.no_grad():
        padded = model.backbone(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        for r, x in enumerate(rows):
            alone = model.backbone(input_ids=x[None], output_hidden_states=True).hidden_states
            for p, a in zip(padded, alone):
                torch.testing.assert_close(p[r][mask[r].bool()], a[0], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------- characters
def test_char_cnn_shapes_and_highway_formula():
    opts = ElmoOptions(char_dim=4, max_chars=8, filters=[[1, 4], [2, 6], [3, 6]], highway_layers=2)
    torch.manual_seed(0)
    cnn = CharCNN(opts, 8)
    chars = torch.randint(0, 20, (5, 8))
    assert cnn(chars).shape == (5, 8)
    # the pooled filters by hand: conv, max over positions, relu; then highway and projection
    x = cnn.embed_chars(chars).transpose(1, 2)
    pooled = torch.cat([F.relu(torch.stack([(x[:, :, s:s + w][:, None] * conv.weight[None]).sum((2, 3))
                                            for s in range(8 - w + 1)], -1).add(conv.bias[None, :, None]).amax(-1))
                        for (w, _), conv in zip(opts.filters, cnn.convs)], -1)  # (5, 16)
    h = pooled
    for layer in cnn.highway.layers:
        W, b = layer.weight, layer.bias
        n = h.shape[1]
        gate = torch.sigmoid(h @ W[n:].T + b[n:])
        h = gate * h + (1 - gate) * torch.relu(h @ W[:n].T + b[:n])
    torch.testing.assert_close(cnn(chars), cnn.proj(h), rtol=1e-5, atol=1e-6)
    hw = Highway(3, 1)
    hw.reset_gates()
    assert torch.all(hw.layers[0].bias[3:] == 1)


def test_token_characters_strip_markers_and_keep_pieces_distinct():
    rows = token_characters(["[PAD]", "play", "##ing", "ing", "averyveryverylongtoken"], 8, "wordpiece", [0])
    assert rows.shape == (5, 8)
    assert rows[0, :2].tolist() == [BOW, SPECIAL]
    assert rows[1, 0] == BOW and rows[1, 5] == EOW and rows[1, 6] == 0
    assert rows[2, 0] == BOC and rows[3, 0] == BOW and rows[2, 1:].tolist() == rows[3, 1:].tolist()
    assert rows[4, -1] == EOW  # cut to max_chars, the end marker kept
    bpe = token_characters(["\u0120play", "ing"], 8, "bpe")  # byte-level: Ġ is the space
    assert bpe[0, 0] == BOW and bpe[1, 0] == BOC and bpe[0, 1:5].tolist() == [5 + c for c in b"play"]
    uni = token_characters(["\u2581play", "ing"], 8, "unigram")
    assert uni[0].tolist() == bpe[0].tolist() and uni[1, 0] == BOC


def test_char_table_is_saved_and_a_folder_runs_without_the_tokenizer(tmp_path):
    model = elmo_model()
    model.save_pretrained(tmp_path)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        assert "backbone.char_table" in f.keys()
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["family"] == "elmo" and saved["family_options"]["token_input"] == "chars"
    again = from_pretrained(tmp_path)
    ids = torch.randint(0, V, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids).logits, model(input_ids=ids).logits, rtol=0, atol=0)
    assert isinstance(again.backbone.config.family_options, ElmoOptions)
    assert again(input_ids=ids).logits.shape == (2, 7, 2, V)  # both directions' scores


def test_errors_are_one_line():
    torch.manual_seed(0)
    empty = build_model(elmo_config())
    with pytest.raises(ConfigError, match=r"token_input=chars but the model has no characters.*set_token_characters"):
        empty(input_ids=torch.tensor([[1, 2]]))
    with pytest.raises(ConfigError, match="has no token table to tie"):
        build_model(elmo_config().replace(tie_embeddings=True))
    with pytest.raises(ConfigError, match=r"model.heads.lm: an elmo model predicts tokens through its shared biLM.*bilm"):
        build_model(elmo_config().replace(heads={"lm": {}}))
    with pytest.raises(ConfigError, match="needs an even d_model"):
        build_model(elmo_config().replace(d_model=15))
    with pytest.raises(ConfigError, match="token_input: expected one of embedding, chars"):
        elmo_config(token_input="bytes")
    with pytest.raises(ConfigError, match=r"family_options.filters: expected \[width, number\]"):
        elmo_config(filters=[[9, 4]])
    with pytest.raises(ConfigError, match="without projection the cells are d_model / 2"):
        build_model(elmo_config(projection=False, cell_size=24))
    with pytest.raises(ConfigError, match="must be larger than d_model / 2"):
        build_model(elmo_config(cell_size=8))
    for err in (ConfigError,):
        try:
            build_model(elmo_config().replace(heads={"lm": {}}))
        except err as e:
            assert "\n" not in str(e)


# ---------------------------------------------------------------------------------- contract
def test_layer_groups_cover_every_parameter_once():
    for opts in ({}, {"token_input": "embedding"}):
        model = elmo_model(**opts)
        groups = model.backbone.layer_groups()
        assert len(groups) == 2 + 2  # token layer, 2 LSTM layers, top
        ids = [id(p) for g in groups for p in g]
        assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in model.backbone.parameters()}


def test_input_embeddings_of_a_char_model_are_its_token_vectors():
    model = elmo_model()
    table = model.get_input_embeddings()
    assert isinstance(table, torch.nn.Embedding) and table.weight.shape == (V, 8)
    with torch.no_grad():
        torch.testing.assert_close(table.weight[[3, 9]], model.backbone.token_representation(torch.tensor([3, 9])))
    assert not any(isinstance(m, type(table)) for m in model.modules())  # not in the module tree
    tied = elmo_model(token_input="embedding")
    assert tied.heads["lm"].output_weight is tied.backbone.embed_tokens.weight


def test_estimate_flops_equals_flop_counter_on_the_model():
    # LSTMP runs ATen's own LSTM on CPU, whose matmuls FlopCounterMode sees: count the real model
    model = elmo_model().train()
    B, T = 2, 11
    ids = torch.randint(0, V, (B, T))
    with FlopCounterMode(display=False) as counter:
        h = model.backbone(input_ids=ids).last_hidden_state
        fwd, bwd = h.chunk(2, -1)
        loss = model.heads["lm"](fwd[:, :-1]).sum() + model.heads["lm"](bwd[:, 1:]).sum()
    forward = counter.get_total_flops() / B
    assert model.estimate_flops(T, "forward", n_predicted=2 * (T - 1)) == forward
    with FlopCounterMode(display=False) as counter:
        h = model.backbone(input_ids=ids).last_hidden_state
        fwd, bwd = h.chunk(2, -1)
        (model.heads["lm"](fwd[:, :-1]).sum() + model.heads["lm"](bwd[:, 1:]).sum()).backward()
    # training is 3 x forward but for one matmul: the gradient of the zero initial state, which
    # nn.LSTM does not need, at the first step of every layer and direction
    P, H, L = 8, 24, 2
    skipped = 2 * L * 2 * (4 * H * P)
    assert model.estimate_flops(T, "train", n_predicted=2 * (T - 1)) == counter.get_total_flops() / B + skipped


@pytest.mark.parametrize("opts", [{"projection": False, "cell_size": 0}, {"token_input": "embedding"}])
def test_estimate_flops_equals_flop_counter_on_the_cell_by_cell_computation(opts):
    # plain LSTMs run oneDNN kernels FlopCounterMode cannot see: count the equivalent cells
    model = elmo_model(**opts).train()
    B, T = 2, 7
    ids = torch.randint(0, V, (B, T))
    model.remove_head("lm")
    with FlopCounterMode(display=False) as counter:
        sum(x.sum() for x in reference_bilm(model.backbone, ids, h0_grad=True)).backward()
    assert model.estimate_flops(T, "train") == counter.get_total_flops() / B


def test_the_learned_mix_is_softmax_normalised_and_finds_the_informative_layer():
    from transferlab.finetune.features import ScalarMix
    from transferlab.finetune.probes import train_scalar_mix

    rng = np.random.default_rng(0)
    N, L, C = 200, 3, 8
    y = rng.integers(0, 2, N)
    x = rng.normal(size=(N, L, C)).astype(np.float32)
    x[:, 2, 0] += 3.0 * (2 * y - 1)  # only layer 2 knows the label
    mix, _, acc = train_scalar_mix(x[:150], y[:150], x[150:], y[150:], epochs=150, weight_decays=(1e-2,))
    w = mix.weights.detach()
    assert acc > 0.9 and torch.isclose(w.sum(), torch.tensor(1.0)) and bool((w > 0).all())
    assert int(w.argmax()) == 2 and float(w[2]) > 0.5  # moved away from uniform (1/3 each)
    assert isinstance(mix, ScalarMix) and torch.allclose(ScalarMix(3).weights, torch.full((3,), 1 / 3))


# ---------------------------------------------------------------------------------- end to end
WORDS = "the a cat dog sat ran on under mat rug and then big small red blue".split()


@pytest.fixture(scope="module")
def elmo_dir(tmp_path_factory):
    """A saved char-input elmo model and its tokenizer."""
    from transferlab.tokenizer import Tokenizer

    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 12))) for _ in range(300)]
    tok = Tokenizer.train(texts, kind="wordpiece", vocab_size=120)
    d = tmp_path_factory.mktemp("elmo")
    cfg = elmo_config().replace(vocab_size=len(tok), pad_token_id=tok.pad_token_id or 0)
    torch.manual_seed(0)
    model = build_model(cfg)
    set_token_characters(model, tok)
    model.save_pretrained(d)
    tok.save(d)
    return d, tok


def test_features_give_every_layer_and_the_mix(elmo_dir):
    from transferlab.features import extract_features
    from transferlab.finetune.features import ScalarMix

    d, tok = elmo_dir
    model = from_pretrained(d)
    texts = ["the cat sat on the mat", "a dog ran", "big red rug and then blue"]
    f_all = extract_features(model, tok, texts, layer="all", pooling="mean")
    assert f_all.values.shape == (3, 3, 16)  # L + 1 = 3 layers of [forward; backward]
    mix = ScalarMix(3, initial_weights=[0.0, 1.0, 2.0])
    mix.gamma.data.fill_(0.5)
    f_mix = extract_features(model, tok, texts, layer="mix", pooling="mean", mix=mix)
    w = torch.softmax(torch.tensor([0.0, 1.0, 2.0]), 0).numpy()
    np.testing.assert_allclose(f_mix.values, 0.5 * np.einsum("l,nlc->nc", w, f_all.values), rtol=1e-5, atol=1e-6)


def test_probe_prints_the_learned_mix_weights(elmo_dir):
    from transferlab.finetune.probes import probe
    from transferlab.finetune.tasks import TaskData

    d, tok = elmo_dir
    rng = random.Random(1)

    def rows(n):
        out = []
        for _ in range(n):
            lab = rng.choice(["cat", "dog"])
            out.append({"text": " ".join([rng.choice(WORDS) for _ in range(5)] + [lab]), "label": lab})
        return out

    task = TaskData("toy", "classification", ["cat", "dog"], rows(60), rows(30), rows(30))
    res = probe(from_pretrained(d), tok, task, train_size=None, mix_epochs=30, c_grid=[1.0])
    assert [r["probe"] for r in res.rows] == ["layer 0", "layer 1", "layer 2", "mean", "mix"]
    assert len(res.mix_weights) == 3 and abs(sum(res.mix_weights) - 1) < 1e-6
    assert "learned mix weights (layer 0 = embeddings .. 2)" in res.table()


def test_elmo_finetunes_a_classifier(tmp_path, elmo_dir):
    from transferlab.finetune import FinetuneConfig, finetune, predict

    d, _ = elmo_dir
    rng = random.Random(2)

    def rows(n: int) -> str:
        out = ["text,label"]
        for _ in range(n):
            lab = rng.choice(["cat", "dog"])
            out.append(" ".join([rng.choice(WORDS) for _ in range(6)] + [lab, lab]) + f",{lab}")
        return "\n".join(out) + "\n"

    (tmp_path / "train.csv").write_text(rows(96), encoding="utf-8")
    (tmp_path / "val.csv").write_text(rows(32), encoding="utf-8")
    res = finetune(FinetuneConfig(out_dir=str(tmp_path / "cls"), model=str(d), train_file=str(tmp_path / "train.csv"),
                                  validation_file=str(tmp_path / "val.csv"), epochs=4, lr=1e-2, batch_size=16,
                                  quiet=True, cost={"track_energy": False}))
    assert res.task_type == "classification"
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    preds = predict(res.out_dir, ["the cat sat on the mat cat cat", "a dog ran dog dog"])
    assert len(preds) == 2 and all(p["prediction"] in ("cat", "dog") for p in preds)


def test_presets_build_and_are_bidirectional():
    for name in ("elmo-tiny", "elmo-mini", "elmo-small"):
        cfg = get_preset(name)
        assert cfg.family == "elmo" and not cfg.is_causal and cfg.family_options.token_input == "chars"
        assert cfg.family_options.projection and cfg.d_model % 2 == 0
    with pytest.raises(ConfigError, match="generate needs a decoder"):
        elmo_model().generate(torch.tensor([[1, 2]]), max_new_tokens=2)
