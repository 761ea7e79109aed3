"""Hugging Face parity, both ways, at tiny random configs.

* transformers -> ours: a randomly initialised transformers model (BERT MLM/pre-training/
  classification/tagging/QA, RoBERTa, GPT-2, BART, T5 v1.0 and v1.1) is saved with
  ``save_pretrained`` and loaded with :func:`transferlab.from_pretrained`; logits, all hidden
  states and greedy generations must be equal (fp32, 1e-5), with padding and token types.
* ours -> transformers: :func:`transferlab.interop.hf.export_hf` writes a directory that
  ``AutoModel*.from_pretrained`` loads with no missing/unexpected keys and equal outputs, and that
  we load back bit-identically.
* preset parameter counts match the reference models (built on the meta device: no memory).
* broken checkpoints and configs without a transformers equivalent fail with one clear line.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch

transformers = pytest.importorskip("transformers")
T = transformers

from safetensors.torch import load_file, save_file  # noqa: E402

import transferlab  # noqa: E402
from transferlab.cli import main as cli  # noqa: E402
from transferlab.errors import CheckpointError, ConfigError  # noqa: E402
from transferlab.interop.hf import export_hf, from_hf, to_hf_state  # noqa: E402
from transferlab.models import build_model  # noqa: E402

V = 101  # vocabulary of every tiny model
ATOL = 1e-5


def _perturb(model: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    """Random init leaves biases at 0 and norms at 1: nudge every tensor so all of them matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
        for name, b in model.named_buffers():
            if name.endswith("final_logits_bias"):
                b.add_(torch.randn(b.shape, generator=g) * scale)
    return model


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, V, (3, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # right padding of different lengths
    mask[2, 4:] = 0
    types = torch.zeros_like(ids)
    types[:, 5:] = 1  # a second segment, also under padding
    dec = torch.randint(4, V, (3, 8), generator=g)
    dmask = torch.ones_like(dec)
    dmask[2, 5:] = 0
    return {"ids": ids, "mask": mask, "types": types, "dec": dec, "dmask": dmask}


def _inputs(kind: str, b: dict) -> dict:
    if kind == "bert":
        return {"input_ids": b["ids"], "attention_mask": b["mask"], "token_type_ids": b["types"]}
    if kind == "roberta":  # pad-aware positions: pads must carry pad_token_id (1)
        return {"input_ids": b["ids"].masked_fill(b["mask"] == 0, 1), "attention_mask": b["mask"]}
    if kind == "gpt2":
        return {"input_ids": b["ids"], "attention_mask": b["mask"]}
    return {"input_ids": b["ids"], "attention_mask": b["mask"], "decoder_input_ids": b["dec"],
            "decoder_attention_mask": b["dmask"]}


def _valid(kind: str, b: dict) -> torch.Tensor:
    """Positions whose outputs are defined (padding rows are garbage in both implementations)."""
    return (b["dmask"] if kind == "seq2seq" else b["mask"]).bool()


def _assert_close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    assert a.shape == b.shape, f"{what}: shapes {tuple(a.shape)} vs {tuple(b.shape)}"
    diff = (a - b).abs().max().item()
    assert diff < ATOL, f"{what}: max abs diff {diff:.3g}"


# ---------------------------------------------------------------------------- tiny transformers configs
def _bert_cfg(**kw):
    return T.BertConfig(**{**dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=48, max_position_embeddings=64), **kw})


def _roberta_cfg(**kw):
    return T.RobertaConfig(**{**dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=48, max_position_embeddings=66, pad_token_id=1,
                                     bos_token_id=0, eos_token_id=2, type_vocab_size=1), **kw})


def _gpt2_cfg(**kw):
    return T.GPT2Config(**{**dict(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=3,
                                  eos_token_id=3, pad_token_id=0), **kw})


def _bart_cfg(**kw):
    return T.BartConfig(**{**dict(vocab_size=V, d_model=32, encoder_layers=2, decoder_layers=2,
                                  encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=48,
                                  decoder_ffn_dim=48, max_position_embeddings=64, forced_eos_token_id=None), **kw})


def _t5_cfg(**kw):
    return T.T5Config(**{**dict(vocab_size=V, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                                relative_attention_num_buckets=8, relative_attention_max_distance=20), **kw})


def _logits(o):
    return o.logits


def _qa(o):
    return torch.stack([o.start_logits, o.end_logits], dim=-1)  # ours: (B, T, 2) start, end


# name: (builder, input kind, [(extract hf output, our head)])
FROM_HF = {
    "bert-mlm": (lambda: T.BertForMaskedLM(_bert_cfg()), "bert", [(_logits, "lm")]),
    "bert-pretraining": (lambda: T.BertForPreTraining(_bert_cfg()), "bert",
                         [(lambda o: o.prediction_logits, "lm"), (lambda o: o.seq_relationship_logits, "nsp")]),
    "bert-seqcls": (lambda: T.BertForSequenceClassification(_bert_cfg(num_labels=3)), "bert",
                    [(_logits, "classification")]),
    "bert-tokcls": (lambda: T.BertForTokenClassification(_bert_cfg(num_labels=5)), "bert",
                    [(_logits, "token_classification")]),
    "bert-qa": (lambda: T.BertForQuestionAnswering(_bert_cfg()), "bert", [(_qa, "span")]),
    "bert-gelu-new-untied": (lambda: T.BertForMaskedLM(_bert_cfg(hidden_act="gelu_new", tie_word_embeddings=False)),
                             "bert", [(_logits, "lm")]),
    "roberta-mlm": (lambda: T.RobertaForMaskedLM(_roberta_cfg()), "roberta", [(_logits, "lm")]),
    "gpt2": (lambda: T.GPT2LMHeadModel(_gpt2_cfg()), "gpt2", [(_logits, "lm")]),
    "gpt2-relu-untied": (lambda: T.GPT2LMHeadModel(_gpt2_cfg(activation_function="relu", n_inner=40,
                                                              tie_word_embeddings=False)), "gpt2", [(_logits, "lm")]),
    "bart": (lambda: T.BartForConditionalGeneration(_bart_cfg()), "seq2seq", [(_logits, "lm")]),
    "bart-scaled-2+1": (lambda: T.BartForConditionalGeneration(_bart_cfg(scale_embedding=True, decoder_layers=1)),
                        "seq2seq", [(_logits, "lm")]),
    "t5": (lambda: T.T5ForConditionalGeneration(_t5_cfg()), "seq2seq", [(_logits, "lm")]),
    "t5-v1.1": (lambda: T.T5ForConditionalGeneration(_t5_cfg(feed_forward_proj="gated-gelu", num_decoder_layers=1,
                                                             tie_word_embeddings=False)), "seq2seq", [(_logits, "lm")]),
}


@pytest.mark.parametrize("case", list(FROM_HF))
def test_transformers_checkpoint_loads_with_equal_outputs(case, batch, tmp_path):
    build, kind, outs = FROM_HF[case]
    torch.manual_seed(0)
    hf = _perturb(build()).eval()
    hf.save_pretrained(tmp_path)  # a real directory: tied weights absent, base-model prefixes
    ours = transferlab.from_pretrained(tmp_path).eval()
    kw = _inputs(kind, batch)
    valid = _valid(kind, batch)
    with torch.no_grad():
        ho = hf(**kw, output_hidden_states=True)
        for extract, head in outs:
            oo = ours(**kw, head=head, output_hidden_states=True)
            a, b = extract(ho), oo.logits
            if a.dim() == 3:
                a, b = a[valid], b[valid]
            _assert_close(a, b, f"{case} {head} logits")
    # every layer's hidden states, on request
    if kind == "seq2seq":
        pairs = [(ho.decoder_hidden_states, oo.hidden_states, valid),
                 (ho.encoder_hidden_states, oo.encoder_hidden_states, batch["mask"].bool())]
    else:
        pairs = [(ho.hidden_states, oo.hidden_states, valid)]
    for hs_hf, hs_ours, v in pairs:
        assert len(hs_hf) == len(hs_ours) >= 2  # embeddings + one per layer
        for i, (a, b) in enumerate(zip(hs_hf, hs_ours)):
            _assert_close(a[v], b[v], f"{case} hidden state {i}")


def test_gpt2_left_padding_with_position_ids(batch):
    hf = _perturb(T.GPT2LMHeadModel(_gpt2_cfg())).eval()
    ours = from_hf(hf).eval()  # straight from the model object, no directory
    mask = batch["mask"].flip(1)  # left padding
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        a = hf(input_ids=batch["ids"], attention_mask=mask, position_ids=pos).logits
        b = ours(input_ids=batch["ids"], attention_mask=mask, position_ids=pos).logits
    _assert_close(a[mask.bool()], b[mask.bool()], "gpt2 left-padded logits")


# ---------------------------------------------------------------------------- greedy generation
def _reinit(model: torch.nn.Module, std: float) -> torch.nn.Module:
    """Wide random matrices: tiny models at init std 0.02 repeat one token forever, which would
    make a generation comparison blind to cache or position bugs."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


def test_greedy_generation_matches_transformers_for_every_generating_family(batch):
    prompts = batch["ids"][:, :6]
    left = torch.ones_like(prompts)
    left[1, :2] = 0  # decoders take left-padded prompts
    left[2, :4] = 0
    cases = [
        (lambda: _reinit(_perturb(T.GPT2LMHeadModel(_gpt2_cfg())), 0.5), prompts, left),
        (lambda: _reinit(_perturb(T.BartForConditionalGeneration(_bart_cfg(
            pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2))), 0.3),
         batch["ids"], batch["mask"]),
        (lambda: _perturb(T.T5ForConditionalGeneration(_t5_cfg()), scale=1.0), batch["ids"], batch["mask"]),
    ]
    for build, ids, mask in cases:
        torch.manual_seed(0)
        hf = build().eval()
        ours = from_hf(hf).eval()
        start = {"decoder_start_token_id": ours.config.decoder_start_token_id} if hf.config.is_encoder_decoder else {}
        with torch.no_grad():
            want = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=20, do_sample=False,
                               num_beams=1, **start)
        got = ours.generate(ids, attention_mask=mask, max_new_tokens=20)
        name = type(hf).__name__
        assert got.shape == want.shape, f"{name}: {tuple(got.shape)} vs {tuple(want.shape)}"
        assert torch.equal(got, want), f"{name}: greedy generations differ\n{got}\n{want}"
        assert want.shape[1] - (0 if hf.config.is_encoder_decoder else ids.shape[1]) >= 20
        distinct = sum(len(set(row)) for row in want[:, -20:].tolist())
        assert distinct >= 8, f"{name}: generations too repetitive to test anything ({distinct} distinct)"


# ---------------------------------------------------------------------------- ours -> transformers
SMALL = dict(vocab_size=V, d_model=32, n_layers=2, n_heads=4, d_ff=48, max_positions=64, dropout=0.0,
             attention_dropout=0.0)
TO_HF = {
    "bert-mlm": ("bert-tiny", {}, "AutoModelForMaskedLM", "BertForMaskedLM", "bert", _logits),
    "bert-pretraining": ("bert-tiny", {"heads": {"lm": {}, "nsp": {}}}, "AutoModelForPreTraining",
                         "BertForPreTraining", "bert", lambda o: o.prediction_logits),
    "bert-seqcls": ("bert-tiny", {"heads": {"classification": {"num_labels": 3}}},
                    "AutoModelForSequenceClassification", "BertForSequenceClassification", "bert", _logits),
    "bert-tokcls": ("bert-tiny", {"heads": {"token_classification": {"num_labels": 5}}},
                    "AutoModelForTokenClassification", "BertForTokenClassification", "bert", _logits),
    "bert-qa": ("bert-tiny", {"heads": {"span": {}}}, "AutoModelForQuestionAnswering", "BertForQuestionAnswering",
                "bert", _qa),
    "bert-backbone": ("bert-tiny", {"heads": {}}, "AutoModel", "BertModel", "bert", lambda o: o.pooler_output),
    "bert-no-segments-relu": ("bert-tiny", {"type_vocab_size": 0, "activation": "relu", "lm_head_bias": False},
                              "AutoModelForMaskedLM", "BertForMaskedLM", "gpt2", _logits),
    "roberta-mlm": ("bert-tiny", {"pad_aware_positions": True, "position_offset": 2, "pad_token_id": 1,
                                  "type_vocab_size": 1}, "AutoModelForMaskedLM", "RobertaForMaskedLM", "roberta",
                    _logits),
    "gpt2": ("gpt-mini", {}, "AutoModelForCausalLM", "GPT2LMHeadModel", "gpt2", _logits),
    "gpt2-untied": ("gpt-mini", {"tie_embeddings": False, "activation": "gelu"}, "AutoModelForCausalLM",
                    "GPT2LMHeadModel", "gpt2", _logits),
    "bart": ("bart-mini", {"pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2, "decoder_start_token_id": 2},
             "AutoModelForSeq2SeqLM", "BartForConditionalGeneration", "seq2seq", _logits),
    "t5": ("t5-mini", {"d_head": 8}, "AutoModelForSeq2SeqLM", "T5ForConditionalGeneration", "seq2seq", _logits),
    "t5-v1.1": ("t5-mini", {"d_head": 8, "activation": "geglu", "tie_embeddings": False, "scale_logits": False,
                            "n_decoder_layers": 1}, "AutoModelForSeq2SeqLM", "T5ForConditionalGeneration",
                "seq2seq", _logits),
}


@pytest.mark.parametrize("case", list(TO_HF))
def test_export_loads_in_transformers_with_equal_outputs(case, batch, tmp_path):
    preset, extra, auto, arch, kind, extract = TO_HF[case]
    torch.manual_seed(0)
    ours = _perturb(build_model(preset, **{**SMALL, **extra})).eval()
    out = export_hf(ours, tmp_path / "hf")
    hf_cfg = json.loads((out / "config.json").read_text())
    assert hf_cfg["architectures"] == [arch]
    hf, info = getattr(T, auto).from_pretrained(out, output_loading_info=True)
    hf.eval()
    assert type(hf).__name__ == arch
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    kw = _inputs("roberta" if case.startswith("roberta") else kind, batch)
    with torch.no_grad():
        a, b = extract(hf(**kw)), ours(**kw)
    b = b.pooler_output if case == "bert-backbone" else b.logits
    if a.dim() == 3:
        v = _valid(kind, batch)
        a, b = a[v], b[v]
    _assert_close(a, b, f"{case} exported logits")
    # and back again: the same tensors under our names
    again = transferlab.from_pretrained(out)
    mine, theirs = ours.state_dict(), again.state_dict()
    dropped = {k for k in mine if k.startswith("backbone.pooler.")} if arch in (
        "BertForMaskedLM", "BertForTokenClassification", "BertForQuestionAnswering", "RobertaForMaskedLM") else set()
    # a model without segments is exported with a 1-row table of zeros (transformers BERT always has one)
    # (and an LM without output bias with a zero bias: transformers' BERT head always has one)
    added = {"backbone.encoder.type_emb.weight"} if extra.get("type_vocab_size") == 0 else set()
    added |= {"heads.lm.bias"} if extra.get("lm_head_bias") is False else set()
    assert set(theirs) - added == set(mine) - dropped
    for k in added:
        assert not theirs[k].any()
    for k in set(theirs) - added:
        assert torch.equal(mine[k], theirs[k]), k


def test_to_hf_state_documents_the_gpt2_conv1d_transpose():
    m = build_model("gpt-mini", **SMALL)
    cfg, state = to_hf_state(m)
    ours = m.state_dict()["backbone.decoder.blocks.0.attn.qkv.weight"]  # (3C, C) nn.Linear
    theirs = state["transformer.h.0.attn.c_attn.weight"]  # (C, 3C) Conv1D
    assert theirs.shape == (32, 96) and torch.equal(theirs, ours.t())
    assert "lm_head.weight" not in state and cfg["tie_word_embeddings"] is True  # tied: left to transformers


# ---------------------------------------------------------------------------- parameter counts
@pytest.mark.parametrize("preset,reference", [
    ("bert-base", lambda: T.BertForMaskedLM(T.BertConfig())),
    ("bert-large", lambda: T.BertForMaskedLM(T.BertConfig(hidden_size=1024, num_hidden_layers=24,
                                                          num_attention_heads=16, intermediate_size=4096))),
    ("gpt-small", lambda: T.GPT2LMHeadModel(T.GPT2Config())),
    ("gpt-medium", lambda: T.GPT2LMHeadModel(T.GPT2Config(n_embd=1024, n_layer=24, n_head=16))),
    ("bart-base", lambda: T.BartForConditionalGeneration(T.BartConfig(
        d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12, decoder_attention_heads=12,
        encoder_ffn_dim=3072, decoder_ffn_dim=3072))),
    ("t5-small", lambda: T.T5ForConditionalGeneration(T.T5Config())),
])
def test_preset_parameter_counts_match_reference_models(preset, reference):
    with torch.device("meta"):  # nothing is allocated
        ours, ref = build_model(preset), reference()
    n, r = ours.num_parameters(), ref.num_parameters()
    assert abs(n - r) / r < 0.01, f"{preset}: {n:,} vs reference {r:,}"
    if preset in ("gpt-small", "gpt-medium", "t5-small"):
        assert n == r  # same modules exactly
    if preset == "gpt-small":
        assert 124e6 < n < 125e6


# ---------------------------------------------------------------------------- errors
def _hf_dir(tmp_path, model=None):
    d = tmp_path / "hf"
    (model or T.BertForMaskedLM(_bert_cfg())).save_pretrained(d)
    return d


def test_tensor_that_does_not_fit_config_is_named(tmp_path):
    d = _hf_dir(tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["intermediate_size"] = 40
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"bert\.encoder\.layer\.0\.intermediate\.dense\.weight \(48, 32\) "
                                              r"does not fit config\.json \(expects \(40, 32\)"):
        transferlab.from_pretrained(d)
    assert cli(["info", str(d)]) == 2  # checked from the header alone


def test_missing_tensor_is_named(tmp_path):
    d = _hf_dir(tmp_path)
    state = load_file(str(d / "model.safetensors"))
    del state["bert.encoder.layer.1.attention.self.key.weight"]
    save_file(state, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match="missing bert.encoder.layer.1.attention.self.key.weight"):
        transferlab.from_pretrained(d)


def test_unsupported_model_type_and_pickle_only_dirs_are_refused(tmp_path):
    d = tmp_path / "mpt"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "mpt", "architectures": ["MptForCausalLM"]}))
    save_file({"x": torch.zeros(1)}, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match="model_type 'mpt' is not supported; supported: bert, roberta"):
        transferlab.from_pretrained(d)
    p = tmp_path / "pickled"
    p.mkdir()
    (p / "config.json").write_text(json.dumps(_bert_cfg().to_dict()))
    (p / "pytorch_model.bin").write_bytes(b"\x80\x04not a real pickle")
    with pytest.raises(CheckpointError, match="reads safetensors only"):
        transferlab.from_pretrained(p)


def test_unused_tensors_are_reported(tmp_path, caplog):
    d = _hf_dir(tmp_path, T.BertForPreTraining(_bert_cfg()))
    cfg = json.loads((d / "config.json").read_text())
    cfg["architectures"] = ["BertForMaskedLM"]
    (d / "config.json").write_text(json.dumps(cfg))
    with caplog.at_level(logging.WARNING, logger="transferlab.interop.hf"):
        m = transferlab.from_pretrained(d)
    assert list(m.config.heads) == ["lm"]
    assert "cls.seq_relationship.weight" in caplog.text


def test_configs_without_a_transformers_equivalent_say_why():
    with pytest.raises(ConfigError, match="as bert it would need norm=layernorm, got rmsnorm"):
        to_hf_state(build_model("bert-tiny", **SMALL, norm="rmsnorm"))
    with pytest.raises(ConfigError, match="as gpt2 it would need norm=layernorm, got rmsnorm"):
        to_hf_state(build_model("gpt-mini", **SMALL, norm="rmsnorm"))
    with pytest.raises(ConfigError, match=r"heads \['span', 'token_classification'\] have no bert architecture"):
        to_hf_state(build_model("bert-tiny", **SMALL, heads={"span": {}, "token_classification": {}}))


# ---------------------------------------------------------------------------- CLI
def test_cli_convert_both_ways(tmp_path, batch, capsys):
    hf = _perturb(T.GPT2LMHeadModel(_gpt2_cfg())).eval()
    hf.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "merges.txt").write_text("#version: 0.2\n")
    assert cli(["convert", "--from-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "ours")]) == 0
    assert "gpt2 GPT2LMHeadModel" in capsys.readouterr().out
    ours_cfg = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert ours_cfg["family"] == "decoder" and "transferlab_version" in ours_cfg
    assert (tmp_path / "ours" / "merges.txt").is_file()  # tokenizer files travel along
    assert cli(["convert", "--to-hf", str(tmp_path / "ours"), "--out", str(tmp_path / "back")]) == 0
    back = T.AutoModelForCausalLM.from_pretrained(tmp_path / "back").eval()
    with torch.no_grad():
        _assert_close(back(input_ids=batch["ids"]).logits, hf(input_ids=batch["ids"]).logits, "cli round trip")
    # each direction refuses the other kind of directory, as a one-line error
    assert cli(["convert", "--to-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "x")]) == 2
    assert cli(["convert", "--from-hf", str(tmp_path / "ours"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("error: ") == 2 and "Traceback" not in err


def test_state_dict_and_config_pair_infers_the_architecture(batch):
    hf = _perturb(T.BartForConditionalGeneration(_bart_cfg())).eval()
    cfg = hf.config.to_dict()
    cfg.pop("architectures", None)  # a bare config: the checkpoint's keys tell the class
    ours = from_hf((hf.state_dict(), cfg)).eval()
    assert list(ours.config.heads) == ["lm"]
    kw = _inputs("seq2seq", batch)
    with torch.no_grad():
        _assert_close(hf(**kw).logits, ours(**kw).logits, "bart from (state, config)")


def test_sharded_checkpoint_and_info_on_a_transformers_dir(tmp_path, batch, capsys):
    hf = _perturb(T.T5ForConditionalGeneration(_t5_cfg())).eval()
    hf.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file() and not (tmp_path / "model.safetensors").exists()
    ours = transferlab.from_pretrained(tmp_path)
    kw = _inputs("seq2seq", batch)
    with torch.no_grad():
        _assert_close(hf(**kw).logits, ours(**kw).logits, "sharded t5")
    assert cli(["info", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "transformers t5 (T5ForConditionalGeneration)" in out and f"{ours.num_parameters():,} total" in out
