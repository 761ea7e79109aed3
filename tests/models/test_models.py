"""Models: every modification switch, SDPA == plain attention, KV cache == recomputation, masks,
hidden states, tying, save/load, presets and the errors users see.

Tiny configs throughout (2 layers, d_model 32, vocab 50): each test runs in milliseconds.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

import transferlab
from tiny import tiny_model
from transferlab.cli import main as cli
from transferlab.config import Activation, Norm as NormKind, Position, get_preset, list_presets
from transferlab.errors import CheckpointError, ConfigError
from transferlab.models import KVCache, build_model
from transferlab.models.blocks import Norm, apply_rotary, rotary_cos_sin, sinusoidal_table

V = 50
TINY = dict(vocab_size=V, d_model=32, n_layers=2, n_heads=4, d_ff=40, max_positions=64, dropout=0.0,
            attention_dropout=0.0)
PRESET_OF = {"encoder": "bert-tiny", "decoder": "gpt-mini", "encoder-decoder": "bart-mini"}
FAMILIES = list(PRESET_OF)


def tiny(family: str, **kw) -> transferlab.TransferModel:
    """The preset of ``family`` at TINY's sizes, seed 0 (tiny.tiny_model)."""
    return tiny_model(PRESET_OF[family], decoder_start=2, **{**TINY, **kw})


def _perturb(model, scale=0.05):
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, V, (3, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 3:] = 0
    return {"ids": ids, "mask": mask, "dec": torch.randint(3, V, (3, 6), generator=g)}


def _kw(family: str, b: dict) -> dict:
    kw = {"input_ids": b["ids"], "attention_mask": b["mask"]}
    if family == "encoder-decoder":
        kw["decoder_input_ids"] = b["dec"]
    return kw


# ---------------------------------------------------------------------------- modification switches
SWITCHES = (
    [("norm", n.value) for n in NormKind]
    + [("prenorm", True), ("prenorm", False)]
    + [("activation", a.value) for a in Activation]
    + [("position", p.value) for p in Position]
    + [("bias", False), ("tie_embeddings", False)]
)


def _structure_ok(model, field: str, value) -> None:
    """The switch changed the modules the way it says."""
    bb = model.backbone
    stack = bb.decoder if hasattr(bb, "decoder") else bb.encoder
    block = stack.blocks[0]
    if field == "norm":
        assert (block.attn_norm.bias is None) == (value == "rmsnorm")
    elif field == "prenorm":
        assert block.prenorm is value
    elif field == "activation":
        gated = value in ("swiglu", "geglu")
        assert block.mlp.fc1.out_features == (2 if gated else 1) * model.config.d_ff
    elif field == "position":
        assert (stack.pos_emb is not None) == (value == "learned")
        assert (stack.rel_bias is not None) == (value == "relative")
    elif field == "bias":
        assert all(m.bias is None for m in model.backbone.modules() if isinstance(m, torch.nn.Linear)
                   and m is not getattr(getattr(bb, "pooler", None), "dense", None))
    elif field == "tie_embeddings":
        assert model.heads["lm"].weight is not None
        assert model.heads["lm"].output_weight is not model.backbone.embed_tokens.weight


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("field,value", SWITCHES, ids=[f"{f}={v}" for f, v in SWITCHES])
def test_every_switch_trains_and_sdpa_equals_math(family, field, value, batch):
    model = tiny(family, **{field: value}, dropout=0.1, attention_dropout=0.1)
    _structure_ok(model, field, value)
    kw = _kw(family, batch)
    labels = kw.get("decoder_input_ids", kw["input_ids"])
    out = model(**kw, labels=labels)
    B, T = labels.shape
    assert out.logits.shape == (B, T, V)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    for name, p in model.named_parameters():
        if "pooler" in name:  # the [CLS] pooler feeds NSP/classification, not the LM head
            continue
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.backbone.embed_tokens.weight.grad.abs().sum() > 0

    # SDPA and plain matmul attention are the same function (padding, causal and bias masks)
    model.eval()
    other = build_model(model.config.replace(attn_impl="math" if model.config.attn_impl == "sdpa" else "sdpa"))
    other.load_state_dict(model.state_dict())
    other.eval()
    with torch.no_grad():
        a, b = model(**kw).logits, other(**kw).logits
    valid = batch["mask"].bool() if family != "encoder-decoder" else slice(None)
    assert (a[valid] - b[valid]).abs().max().item() < 1e-5


@pytest.mark.parametrize("field,value", [("prenorm", False), ("activation", "relu"), ("activation", "swiglu"),
                                         ("position", "rotary"), ("position", "none"), ("norm", "rmsnorm"),
                                         ("scale_embeddings", True)])
def test_switches_change_the_function(field, value, batch):
    """A switch that was silently ignored would pass the test above; it must change outputs."""
    base = _perturb(tiny("decoder")).eval()
    changed = tiny("decoder", **{field: value}).eval()
    mine = changed.state_dict()
    changed.load_state_dict({k: v for k, v in base.state_dict().items()
                             if k in mine and v.shape == mine[k].shape}, strict=False)
    with torch.no_grad():
        a, b = base(input_ids=batch["ids"]).logits, changed(input_ids=batch["ids"]).logits
    assert (a - b).abs().max() > 1e-3


def test_gated_mlp_is_act_of_gate_times_up():
    m = tiny("decoder", activation="swiglu")
    mlp = m.backbone.decoder.blocks[0].mlp
    x = torch.randn(2, 3, 32)
    gate, up = torch.nn.functional.linear(x, mlp.fc1.weight, mlp.fc1.bias).chunk(2, dim=-1)
    want = mlp.fc2(torch.nn.functional.silu(gate) * up)
    torch.testing.assert_close(mlp(x), want)


# ---------------------------------------------------------------------------- blocks
def test_rmsnorm_and_layernorm_formulas():
    x = torch.randn(4, 8) * 3 + 1
    rms = Norm(8, "rmsnorm", 1e-6)
    torch.testing.assert_close(rms(x), x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))
    ln = Norm(8, "layernorm", 1e-5)
    torch.testing.assert_close(ln(x), (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-5))


def test_sinusoidal_table_is_vaswani():
    t = sinusoidal_table(10, 8)
    pos, i = 7, 2
    assert math.isclose(t[pos, 2 * i].item(), math.sin(pos / 10000 ** (2 * i / 8)), rel_tol=1e-5)
    assert math.isclose(t[pos, 2 * i + 1].item(), math.cos(pos / 10000 ** (2 * i / 8)), rel_tol=1e-5)


def test_rotary_scores_depend_only_on_relative_offset():
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(pq, pk):
        cq = rotary_cos_sin(torch.tensor([[pq]]), 16, 10000.0, torch.float32)
        ck = rotary_cos_sin(torch.tensor([[pk]]), 16, 10000.0, torch.float32)
        return (apply_rotary(q, *cq) * apply_rotary(k, *ck)).sum().item()

    assert math.isclose(score(3, 1), score(13, 11), rel_tol=1e-4, abs_tol=1e-5)
    assert not math.isclose(score(3, 1), score(3, 2), rel_tol=1e-3)


@pytest.mark.parametrize("position", ["learned", "sinusoidal", "rotary", "relative", "none"])
def test_encoder_outputs_ignore_padding(position):
    m = _perturb(tiny("encoder", position=position)).eval()
    ids = torch.randint(3, V, (1, 6))
    padded = torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], 1)
    mask = torch.cat([torch.ones(1, 6), torch.zeros(1, 4)], 1).long()
    with torch.no_grad():
        a = m(input_ids=ids).last_hidden_state
        b = m(input_ids=padded, attention_mask=mask).last_hidden_state[:, :6]
    assert (a - b).abs().max() < 1e-5


@pytest.mark.parametrize("position", ["learned", "rotary", "relative"])
def test_decoder_is_causal(position):
    m = _perturb(tiny("decoder", position=position)).eval()
    ids = torch.randint(3, V, (2, 8))
    other = ids.clone()
    other[:, 5:] = torch.randint(3, V, (2, 3))
    with torch.no_grad():
        a, b = m(input_ids=ids).logits, m(input_ids=other).logits
    assert (a[:, :5] - b[:, :5]).abs().max() < 1e-6
    assert (a[:, 5:] - b[:, 5:]).abs().max() > 1e-4


def test_hidden_states_on_request(batch):
    for family in FAMILIES:
        m = tiny(family).eval()
        with torch.no_grad():
            out = m(**_kw(family, batch), output_hidden_states=True)
            plain = m(**_kw(family, batch))
        assert plain.hidden_states is None
        n = m.config.decoder_layers if family == "encoder-decoder" else m.config.n_layers
        assert len(out.hidden_states) == n + 1  # embeddings + one per block
        assert torch.equal(out.hidden_states[-1], out.last_hidden_state)
        if family == "encoder-decoder":
            assert len(out.encoder_hidden_states) == m.config.n_layers + 1
            assert torch.equal(out.encoder_hidden_states[-1], out.encoder_last_hidden_state)


def test_inputs_embeds_equal_input_ids():
    m = tiny("encoder").eval()
    ids = torch.randint(3, V, (2, 5))
    with torch.no_grad():
        a = m(input_ids=ids).logits
        b = m(inputs_embeds=m.get_input_embeddings()(ids)).logits
    torch.testing.assert_close(a, b)


def test_tied_embeddings_share_storage_and_survive_save_load(tmp_path):
    m = tiny("decoder")
    assert m.heads["lm"].output_weight is m.backbone.embed_tokens.weight
    assert "heads.lm.weight" not in m.state_dict()
    m.save_pretrained(tmp_path)
    again = transferlab.from_pretrained(tmp_path)
    assert again.heads["lm"].output_weight is again.backbone.embed_tokens.weight
    untied = tiny("decoder", tie_embeddings=False)
    assert untied.num_parameters() == m.num_parameters() + V * 32


# ---------------------------------------------------------------------------- KV cache
def _incremental_decoder(m, ids, mask=None, pos=None, prefill=1):
    cache = KVCache.empty(m.config.n_layers)
    outs = []
    t = 0
    while t < ids.shape[1]:
        n = prefill if t == 0 else 1
        kw = {"input_ids": ids[:, t:t + n], "past_key_values": cache, "use_cache": True}
        if mask is not None:
            kw["attention_mask"] = mask[:, :t + n]  # the mask covers past + current keys
            kw["position_ids"] = pos[:, t:t + n]
        outs.append(m(**kw).logits)
        t += n
    return torch.cat(outs, 1)


@pytest.mark.parametrize("position", ["learned", "sinusoidal", "rotary", "relative", "none"])
def test_kv_cache_decoder_equals_full_recomputation(position):
    m = _perturb(tiny("decoder", position=position)).eval()
    ids = torch.randint(3, V, (2, 40))  # > 16: the cache regrows (doubling) on the way
    with torch.no_grad():
        full = m(input_ids=ids).logits
        one_by_one = _incremental_decoder(m, ids)
        chunked = _incremental_decoder(m, ids, prefill=7)  # prefill a prompt, then step
    assert (full - one_by_one).abs().max() < 1e-5
    assert (full - chunked).abs().max() < 1e-5


@pytest.mark.parametrize("position", ["learned", "rotary", "relative"])
def test_kv_cache_with_left_padding(position):
    m = _perturb(tiny("decoder", position=position)).eval()
    ids = torch.randint(3, V, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding, as in batched generation
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        full = m(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        inc = _incremental_decoder(m, ids, mask, pos, prefill=5)
    v = mask.bool()
    assert (full[v] - inc[v]).abs().max() < 1e-5


@pytest.mark.parametrize("kind", ["bart", "t5", "rotary"])
def test_kv_cache_encoder_decoder_equals_full_recomputation(kind, batch):
    if kind == "t5":
        torch.manual_seed(0)
        m = build_model("t5-mini", **{**TINY, "d_head": 8})
    else:
        m = tiny("encoder-decoder", **({"position": "rotary"} if kind == "rotary" else {}))
    m = _perturb(m).eval()
    dec = torch.randint(3, V, (3, 20))
    with torch.no_grad():
        full = m(input_ids=batch["ids"], attention_mask=batch["mask"], decoder_input_ids=dec).logits
        enc = m.backbone.encode(batch["ids"], batch["mask"])  # (B, S, C)
        cache = KVCache.empty(m.config.decoder_layers)
        steps = [m(encoder_outputs=enc, attention_mask=batch["mask"], decoder_input_ids=dec[:, t:t + 1],
                   past_key_values=cache, use_cache=True).logits for t in range(dec.shape[1])]
    assert cache.seq_len == 20 and cache.layers[0].cross is not None  # encoder keys computed once
    assert (full - torch.cat(steps, 1)).abs().max() < 1e-5


def test_kv_cache_reorder_selects_rows():
    m = _perturb(tiny("decoder", position="rotary")).eval()
    ids = torch.randint(3, V, (3, 9))
    order = torch.tensor([2, 2, 0])
    with torch.no_grad():
        cache = KVCache.empty(2)
        m(input_ids=ids[:, :8], past_key_values=cache, use_cache=True)
        cache.reorder(order)
        step = m(input_ids=ids[order, 8:], past_key_values=cache, use_cache=True).logits
        full = m(input_ids=ids[order]).logits[:, 8:]
    assert (step - full).abs().max() < 1e-5


# ---------------------------------------------------------------------------- save / load
def test_save_load_round_trip_and_overrides(tmp_path, batch):
    m = _perturb(tiny("encoder-decoder")).eval()
    m.save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["family"] == "encoder-decoder" and cfg["heads"] == {"lm": {}} and "transferlab_version" in cfg
    again = transferlab.from_pretrained(tmp_path / "m").eval()
    with torch.no_grad():
        assert torch.equal(m(**_kw("encoder-decoder", batch)).logits, again(**_kw("encoder-decoder", batch)).logits)
    fast = transferlab.from_pretrained(tmp_path / "m", attn_impl="math", dropout=0.3)
    assert fast.config.attn_impl == "math" and fast.backbone.encoder.blocks[0].attn.impl == "math"
    assert fast.backbone.encoder.blocks[0].drop.p == 0.3  # applied before the modules were built
    with pytest.raises(ConfigError, match="unknown model field"):
        transferlab.from_pretrained(tmp_path / "m", n_layer=3)


def test_heads_come_from_config(tmp_path, batch):
    m = tiny("encoder", heads={"lm": {}, "nsp": {}, "sentiment": {"type": "classification", "num_labels": 3}})
    m.save_pretrained(tmp_path)
    again = transferlab.from_pretrained(tmp_path).eval()
    assert list(again.heads) == ["lm", "nsp", "sentiment"]
    with torch.no_grad():
        assert again(**_kw("encoder", batch), head="sentiment").logits.shape == (3, 3)
        assert again(**_kw("encoder", batch), head="nsp").logits.shape == (3, 2)


# ---------------------------------------------------------------------------- presets
EXPECTED = {  # name: (layers, d_model, heads)
    "bert-tiny": (2, 128, 2), "bert-mini": (4, 256, 4), "bert-small": (4, 512, 8), "bert-medium": (8, 512, 8),
    "bert-base": (12, 768, 12), "bert-large": (24, 1024, 16), "gpt-mini": (4, 256, 4), "gpt-small": (12, 768, 12),
    "gpt-medium": (24, 1024, 16), "bart-mini": (2, 256, 4), "bart-base": (6, 768, 12), "t5-mini": (4, 256, 4),
    "t5-small": (6, 512, 8),
    "elmo-tiny": (2, 128, 4), "elmo-mini": (2, 256, 4), "elmo-small": (2, 512, 4),  # heads unused by elmo
    "word2vec-128": (1, 128, 4), "word2vec-256": (1, 256, 4),  # no layers: n_layers is a placeholder
    "awd-lstm-tiny": (3, 128, 4), "awd-lstm-mini": (3, 256, 4),  # heads unused by the LSTM
}


def test_presets_have_the_documented_sizes():
    assert set(list_presets()) == set(EXPECTED)
    docs = (Path(__file__).parents[2] / "docs" / "models.md").read_text()
    for name, (layers, d, h) in EXPECTED.items():
        cfg = get_preset(name)
        assert (cfg.n_layers, cfg.d_model, cfg.n_heads) == (layers, d, h), name
        with torch.device("meta"):
            n = build_model(name).num_parameters()
        row = re.search(rf"^\| `{name}` \|.*$", docs, re.M)
        assert row, f"docs/models.md has no row for {name}"
        assert f"{n / 1e6:.1f}M" in row.group(0), f"docs/models.md: {name} should say {n / 1e6:.1f}M"
    with torch.device("meta"):
        assert 105e6 < build_model("bert-base").num_parameters() < 115e6
        assert 330e6 < build_model("bert-large").num_parameters() < 345e6
        assert 350e6 < build_model("gpt-medium").num_parameters() < 360e6
        assert 135e6 < build_model("bart-base").num_parameters() < 145e6


# ---------------------------------------------------------------------------- errors
def test_inconsistent_configs_are_named():
    with pytest.raises(ConfigError, match="d_model=100 is not divisible by model.n_heads=3"):
        build_model("bert-tiny", d_model=100, n_heads=3)
    with pytest.raises(ConfigError, match="unknown preset 'gpt-huge'"):
        build_model("gpt-huge")
    with pytest.raises(ConfigError, match="unknown head 'mlmm'"):
        build_model("bert-tiny", heads={"mlmm": {}})
    with pytest.raises(ConfigError, match="decoder_start_token_id is not set"):
        build_model("bart-mini", **TINY)(input_ids=torch.ones(1, 3, dtype=torch.long))


def test_checkpoint_that_does_not_match_its_config(tmp_path, capsys):
    d = tmp_path / "m"
    tiny("encoder").save_pretrained(d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["d_ff"] = 44
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"mlp\.fc1\.weight: file \(40, 32\) vs config \(44, 32\)"):
        transferlab.from_pretrained(d)
    assert cli(["info", str(d)]) == 2  # checked from the file header, weights not loaded
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "tensors do not match config.json" in err and err.count("\n") == 1


def test_info_cli(tmp_path, capsys):
    assert cli(["info", "bert-base"]) == 0
    out = capsys.readouterr().out
    with torch.device("meta"):
        m = build_model("bert-base")
    assert f"{m.num_parameters():,} total" in out
    assert f"{m.num_parameters(exclude_embeddings=True):,} non-embedding" in out
    assert "post-norm" in out and "layers 12" in out and "d_model=768" in out
    # a saved directory, as JSON
    d = tmp_path / "m"
    tiny("decoder", position="rotary").save_pretrained(d)
    assert cli(["info", str(d), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["family"] == "decoder" and info["config"]["position"] == "rotary"
    # every user mistake: exit 2 and one line
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text(json.dumps({**get_preset("bert-tiny").to_dict(),
                                                              "n_heads": 5, "transferlab_version": "0"}))
    (tmp_path / "trunc").mkdir()
    tiny("encoder").save_pretrained(tmp_path / "trunc")
    w = tmp_path / "trunc" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    for arg, msg in [("bert-huge", "did you mean bert-large"), (str(tmp_path / "bad"), "not divisible by model.n_heads=5"),
                     (str(tmp_path / "trunc"), "not a readable safetensors file")]:
        assert cli(["info", arg]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and msg in err and "Traceback" not in err, err


def test_from_pretrained_returns_eval_mode_like_transformers(tmp_path, batch):
    m = _perturb(tiny("encoder", dropout=0.3))
    m.save_pretrained(tmp_path)
    again = transferlab.from_pretrained(tmp_path)
    assert not again.training  # dropout off: two calls agree
    with torch.no_grad():
        assert torch.equal(again(input_ids=batch["ids"]).logits, again(input_ids=batch["ids"]).logits)


def test_auto_pooling_is_the_familys_choice():
    """pooling=auto: cls for encoders, last for causal stacks, the family's own for registered ones (elmo: mean)."""
    import torch

    from transferlab.models.heads import pool

    h = torch.arange(2 * 3 * 2, dtype=torch.float32).view(2, 3, 2)  # (B, T, C)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    for preset, want in (("bert-tiny", "cls"), ("gpt-mini", "last"), ("bart-mini", "last"), ("elmo-tiny", "mean")):
        cfg = get_preset(preset)
        assert torch.equal(pool(cfg, h, mask, "auto"), pool(cfg, h, mask, want)), preset
