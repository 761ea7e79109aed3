import json

import numpy as np
import pytest
import torch

from tiny import tiny_config
from transferlab.cli import main
from transferlab.config import get_preset
from transferlab.errors import CheckpointError, ConfigError
from transferlab.finetune.features import ScalarMix, extract_features, load_model_and_tokenizer, save_features
from transferlab.finetune.probes import (
    find_occurrences,
    neighbours,
    probe,
    sample_sentences,
    static_neighbours,
    train_scalar_mix,
    word_vectors,
)
from transferlab.finetune.tasks import TaskData
from transferlab.models.model import build_model
from transferlab.tokenizer import Tokenizer

CORPUS = [
    "the kids play in the park after school",
    "she will play the piano at the concert tonight",
    "a new play opened on broadway last night",
    "the team will play the final match on sunday",
    "the actors loved the play and the audience cheered",
    "we play chess and cards on rainy days",
    "he plays guitar in a band",
    "the match was a draw and the fans went home",
] * 4


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(CORPUS, kind="wordpiece", vocab_size=150, min_frequency=1)


def _cfg(tok, family="encoder", **kw):
    """A headless 2-layer config of ``family`` over ``tok`` (tiny.tiny_config), token types for an encoder."""
    base = dict(vocab_size=len(tok), n_layers=2, heads={}, dropout=0.0, attention_dropout=0.0, max_positions=64)
    if family == "encoder":
        base["type_vocab_size"] = 2
    return tiny_config(family, **{**base, **kw})


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    return build_model(_cfg(tok)).eval()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tok, model):
    d = tmp_path_factory.mktemp("tiny_model")
    model.save_pretrained(d)
    tok.save(d)
    return d


# ------------------------------------------------------------------------------ ScalarMix
def test_scalar_mix_weights_are_softmax_normalised_and_mix_layers():
    mix = ScalarMix(3)
    assert torch.allclose(mix.weights, torch.full((3,), 1 / 3))  # starts as a uniform average
    with torch.no_grad():
        mix.scalar_parameters.copy_(torch.tensor([2.0, -1.0, 0.5]))
        mix.gamma.fill_(1.7)
    w = mix.weights
    assert torch.all(w > 0) and torch.isclose(w.sum(), torch.tensor(1.0))
    assert torch.allclose(w, torch.softmax(torch.tensor([2.0, -1.0, 0.5]), 0))
    layers = [torch.randn(4, 5, 8) for _ in range(3)]
    expected = 1.7 * sum(w[i] * layers[i] for i in range(3))
    assert torch.allclose(mix(layers), expected, atol=1e-6)
    assert torch.allclose(mix(torch.stack(layers)), expected, atol=1e-6)  # (L, ...) tensor form too


def test_scalar_mix_gradient_flows_to_weights_and_gamma():
    mix = ScalarMix(4, layer_norm=True)
    layers = torch.randn(4, 2, 3, 8, requires_grad=True)
    mix(layers).pow(2).sum().backward()
    assert mix.scalar_parameters.grad is not None and mix.scalar_parameters.grad.abs().sum() > 0
    assert mix.gamma.grad is not None and mix.gamma.grad.abs() > 0
    assert layers.grad.abs().sum() > 0


def test_scalar_mix_errors_and_save_load(tmp_path):
    with pytest.raises(ConfigError, match="built for 3 layers but got 2"):
        ScalarMix(3)(torch.randn(2, 1, 4))
    with pytest.raises(ConfigError):
        ScalarMix(3, initial_weights=[1.0, 2.0])
    mix = ScalarMix(3, layer_norm=True, initial_weights=[0.1, 0.2, 3.0])
    mix.gamma.data.fill_(0.5)
    mix.save(tmp_path / "mix.json")
    back = ScalarMix.load(tmp_path / "mix.json")
    assert back.layer_norm and torch.allclose(back.weights, mix.weights) and float(back.gamma.detach()) == 0.5
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ConfigError, match="bad.json"):
        ScalarMix.load(tmp_path / "bad.json")


def test_scalar_mix_probe_learns_the_informative_layer():
    # toy problem: only layer 2 of 4 carries the (linearly separable) label
    g = np.random.default_rng(0)
    n, L, C = 300, 4, 16
    y = g.integers(0, 2, n)
    x = g.normal(size=(n, L, C)).astype(np.float32)
    x[:, 2, 0] += np.where(y == 1, 3.0, -3.0)
    mix, head, val_acc = train_scalar_mix(x[:200], y[:200], x[200:], y[200:], epochs=150, weight_decays=(1e-3,))
    assert val_acc >= 0.98
    w = mix.weights.detach().numpy()
    assert int(np.argmax(w)) == 2 and w[2] > 0.5
    with torch.no_grad():
        pred = head(mix(torch.as_tensor(x[200:]).transpose(0, 1))).argmax(-1).numpy()
    assert (pred == y[200:]).mean() >= 0.98


# ------------------------------------------------------------------------------ extraction
def test_extract_shapes_and_layers(tok, model):
    texts = CORPUS[:5]
    n_tok = [len(tok(t)["input_ids"]) for t in texts]
    f = extract_features(model, tok, texts, layer=-1, pooling="mean")
    assert f.values.shape == (5, 32) and f.values.dtype == np.float32 and f.attention_mask is None
    f_all = extract_features(model, tok, texts, layer="all", pooling="mean")
    assert f_all.values.shape == (5, 3, 32)  # embeddings + 2 blocks
    np.testing.assert_allclose(f_all.values[:, 2], f.values, atol=1e-5)
    f0 = extract_features(model, tok, texts, layer=0, pooling="cls")
    np.testing.assert_allclose(
        f0.values, extract_features(model, tok, texts, layer="all", pooling="cls").values[:, 0], atol=1e-5)
    tokens = extract_features(model, tok, texts, layer=1, pooling="none")
    assert tokens.values.shape == (5, max(n_tok), 32)
    assert tokens.attention_mask.sum(1).tolist() == n_tok
    assert np.all(tokens.values[tokens.attention_mask == 0] == 0)  # padding zeroed
    # mean pooling is the masked mean of the per-token vectors
    manual = tokens.values.sum(1) / tokens.attention_mask.sum(1, keepdims=True)
    np.testing.assert_allclose(extract_features(model, tok, texts, layer=1).values, manual, atol=1e-5)
    # the default (uniform) mix is the mean over layers of the pooled vectors
    mixed = extract_features(model, tok, texts, layer="mix", pooling="mean")
    np.testing.assert_allclose(mixed.values, f_all.values.mean(1), atol=1e-5)
    assert mixed.meta["mix_weights"] == pytest.approx([1 / 3] * 3, abs=1e-6)
    all_tokens = extract_features(model, tok, texts, layer="all", pooling="none")
    assert all_tokens.values.shape == (5, 3, max(n_tok), 32)
    with pytest.raises(ConfigError, match="layer 3 does not exist"):
        extract_features(model, tok, texts, layer=3)
    model.train()  # extraction runs in eval mode (no dropout) and puts the mode back
    extract_features(model, tok, texts[:1])
    assert model.training
    model.eval()
    with pytest.raises(ConfigError, match="pooling"):
        extract_features(model, tok, texts, pooling="max")


def test_extract_is_independent_of_batching(tok, model):
    # length-sorted batches with padding must give each text the same vector as alone
    texts = [CORPUS[0], CORPUS[6], CORPUS[4] + " and more words here", CORPUS[2]]
    for pooling in ("mean", "cls", "last"):
        one = extract_features(model, tok, texts, layer=-1, pooling=pooling, batch_size=1).values
        four = extract_features(model, tok, texts, layer=-1, pooling=pooling, batch_size=4).values
        np.testing.assert_allclose(one, four, atol=1e-5)


def test_extract_decoder_and_encoder_decoder(tok):
    torch.manual_seed(0)
    texts = CORPUS[:3]
    dec = build_model(_cfg(tok, "decoder", prenorm=True, final_norm=True, embedding_norm=False)).eval()
    f = extract_features(dec, tok, texts, layer="all", pooling="last")
    assert f.values.shape == (3, 3, 32)
    # causal: the first token's vector does not depend on what follows
    a = extract_features(dec, tok, ["the kids"], layer=-1, pooling="none").values[0, :2]
    b = extract_features(dec, tok, ["the kids play in the park"], layer=-1, pooling="none").values[0, :2]
    np.testing.assert_allclose(a, b, atol=1e-5)
    ed = build_model(_cfg(tok, "encoder-decoder", decoder_start_token_id=0)).eval()
    assert extract_features(ed, tok, texts, layer=-1, pooling="mean").values.shape == (3, 32)


def test_save_features_npy_and_safetensors(tmp_path, tok, model):
    from safetensors.numpy import load_file

    f = extract_features(model, tok, CORPUS[:3], layer=1, pooling="none")
    files = save_features(f, tmp_path / "x.safetensors")
    back = load_file(str(files[0]))
    np.testing.assert_array_equal(back["features"], f.values)
    np.testing.assert_array_equal(back["attention_mask"], f.attention_mask)
    files = save_features(f, tmp_path / "x.npy")
    assert np.load(tmp_path / "x.npy", allow_pickle=False).shape == f.values.shape
    np.testing.assert_array_equal(np.load(tmp_path / "x.mask.npy"), f.attention_mask)
    assert json.loads((tmp_path / "x.json").read_text())["pooling"] == "none"
    with pytest.raises(ConfigError, match=r"\.npy or \.safetensors"):
        save_features(f, tmp_path / "x.pt")


# ------------------------------------------------------------------------------ words
def test_word_vectors_average_sub_words(tok, model):
    sent = "the kids playfully ran"  # 'playfully' is not in the tiny vocabulary: several pieces
    enc = tok(sent, return_offsets_mapping=True)
    a, b = sent.index("playfully"), sent.index("playfully") + len("playfully")
    pieces = [i for i, (s, e) in enumerate(enc["offset_mapping"]) if e > s and s < b and e > a]
    assert len(pieces) >= 2
    vecs, found = word_vectors(model, tok, [(sent, a, b)], layer=-1)
    per_token = extract_features(model, tok, [sent], layer=-1, pooling="none").values[0]
    assert found.all()
    np.testing.assert_allclose(vecs[0], per_token[pieces].mean(0), atol=1e-5)


def test_occurrences_and_sampling():
    occ = find_occurrences(["Play on. Replay the play!", "no match here"], "play")
    assert [(s[a:b]) for s, a, b in occ] == ["Play", "play"]  # whole words only, any case
    docs = ["I like to play. The weather is bad. A play, a show.", "Nothing here."] * 3
    got = sample_sentences(docs, "play", n=10, seed=0)
    assert got == ["I like to play.", "A play, a show."]  # sentences with the word, de-duplicated
    assert len(sample_sentences(CORPUS * 10, "the", n=3, seed=1)) == 3


def test_neighbours_contextual_and_static(tok, model):
    rep = neighbours(model, tok, "play", corpus=CORPUS, sentences=[CORPUS[2]], k=3)
    top_sim, top_sentence = rep.queries[0]["neighbours"][0]
    assert top_sentence == CORPUS[2] and top_sim == pytest.approx(1.0, abs=1e-5)  # itself is nearest
    sims = [s for s, _ in rep.queries[0]["neighbours"]]
    assert sims == sorted(sims, reverse=True) and len(sims) == 3
    assert rep.n_occurrences == 6  # distinct corpus sentences with the whole word "play" ("plays" is not it)
    static = static_neighbours(model, tok, "play", k=5)
    toks = [t for t, _ in static]
    assert len(toks) == 5 and "play" not in toks and not set(toks) & set(tok.all_special_tokens)
    text = rep.format()
    assert "[play]" in text and "static input-embedding neighbours" in text
    with pytest.raises(ConfigError, match="does not contain"):
        neighbours(model, tok, "play", corpus=CORPUS, sentences=["no such word"])
    with pytest.raises(ConfigError, match="beyond max_length=4"):
        neighbours(model, tok, "play", corpus=CORPUS, sentences=["the kids went home to play"], max_length=4)


# ------------------------------------------------------------------------------ probe
def test_probe_rows_and_mix(tok, model):
    g = np.random.default_rng(0)
    pos = ["the actors loved the play", "the fans cheered the team", "she will play the piano"]
    neg = ["the match was a draw", "nothing at the park", "the kids went home"]

    def split(n):
        exs = [{"text": pos[i % 3] if y else neg[i % 3], "label": "pos" if y else "neg"}
               for i, y in enumerate(g.integers(0, 2, n))]
        return exs

    data = TaskData("toy", "classification", ["neg", "pos"], split(40), split(20), split(20))
    res = probe(model, tok, data, train_size=30, seed=0, max_length=32, c_grid=(0.1, 1.0), mix_epochs=40)
    assert [r["probe"] for r in res.rows] == ["layer 0", "layer 1", "layer 2", "mean", "mix"]
    assert res.n_train == 30 and len(res.mix_weights) == 3 and sum(res.mix_weights) == pytest.approx(1.0)
    assert all(0.0 <= r["validation"] <= 1.0 and r["test"] is not None for r in res.rows)
    # the texts repeat exactly, so every layer separates them
    assert max(r["test"] for r in res.rows) == 1.0
    assert "learned mix weights" in res.table()
    with pytest.raises(ConfigError, match="classification"):
        probe(model, tok, TaskData("s", "seq2seq", [], [], [], []))


# ------------------------------------------------------------------------------ loading + CLI
def test_load_model_and_tokenizer(model_dir, tmp_path):
    m, t = load_model_and_tokenizer(model_dir)
    assert not m.training and len(t) > 0
    with pytest.raises(CheckpointError, match="not a model directory"):
        load_model_and_tokenizer(tmp_path / "missing")
    bare = tmp_path / "bare"
    build_model(get_preset("bert-tiny", vocab_size=100)).save_pretrained(bare)
    with pytest.raises(CheckpointError, match="no tokenizer"):
        load_model_and_tokenizer(bare)


def test_cli_features_extract_and_neighbours(model_dir, tmp_path, capsys):
    inp = tmp_path / "in.txt"
    inp.write_text("\n".join(CORPUS[:6]) + "\n")
    out = tmp_path / "f.npy"
    rc = main(["features", "--model", str(model_dir), "--input", str(inp), "--layer", "1", "--pooling", "cls",
               "--output", str(out)])
    assert rc == 0 and np.load(out).shape == (6, 32)
    rc = main(["features", "--model", str(model_dir), "--input", str(inp), "--layer", "mix", "--output",
               str(tmp_path / "m.safetensors")])
    assert rc == 0 and (tmp_path / "m.safetensors").exists()
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(CORPUS[:8]) + "\n")
    capsys.readouterr()
    rc = main(["features", "neighbours", "--model", str(model_dir), "--word", "play", "--corpus", str(corpus),
               "--sentence", "the kids play outside", "--k", "2"])
    text = capsys.readouterr().out
    assert rc == 0 and "> the kids [play] outside" in text and "static input-embedding" in text
    # user mistakes: one line, exit 2
    assert main(["features", "--model", str(tmp_path / "nope"), "--input", str(inp), "--output", str(out)]) == 2
    assert main(["features", "--model", str(model_dir), "--input", str(inp), "--output", str(tmp_path / "x.txt")]) == 2
    assert main(["features", "--model", str(model_dir), "--input", str(inp), "--layer", "7", "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("error: ") == 3 and "Traceback" not in err


def test_cli_features_config_file_flags_and_dotted_overrides(model_dir, tmp_path, capsys):
    """`features --config FILE.yaml` + flags + features.KEY=VALUE, with finetune's precedence."""
    import json

    inp = tmp_path / "in.txt"
    inp.write_text("\n".join(CORPUS[:5]) + "\n")
    cfg = tmp_path / "feats.yaml"
    cfg.write_text(f"features:\n  model: {model_dir}\n  input: {inp}\n  layer: '0'\n  pooling: mean\n  limit: 4\n")
    out = tmp_path / "f.npy"
    # the file's layer 0 loses to the override, its pooling to the flag; flags may follow the overrides
    rc = main(["features", "--config", str(cfg), "--pooling", "cls", "--output", str(out), "features.layer=-1",
               "features.batch_size=2", "--force"])
    assert rc == 0, capsys.readouterr().err
    side = json.loads(out.with_suffix(".json").read_text())
    assert np.load(out).shape == (4, 32) and side["layer"] == "-1" and side["pooling"] == "cls"
    capsys.readouterr()
    for bad, pattern in ((["features.lyr=1"], "unknown field 'lyr'"), (["train.lr=1"], "expected features.KEY=VALUE"),
                         (["features.batch_size=0"], "features.batch_size")):
        assert main(["features", "--config", str(cfg), "--output", str(out), "--force", *bad]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and pattern in err, err


def test_features_flag_defaults_are_the_config_defaults():
    from transferlab.cli import build_parser
    from transferlab.commands import features as fcmd
    from transferlab.finetune.features import FeaturesConfig

    build_parser()
    base = FeaturesConfig()
    assert fcmd.FLAG_DEFAULTS
    for dest, shown in fcmd.FLAG_DEFAULTS.items():
        assert getattr(base, dest) == shown, dest
