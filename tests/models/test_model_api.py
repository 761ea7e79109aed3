"""The transformers-style surface of TransferModel, checked against transformers itself on the
same weights: ``out[0]`` / ``return_dict=False`` in transformers' field order, ``model.dtype`` /
``model.device``, ``from_pretrained(dtype=...)`` (and ``torch_dtype=``, ``"auto"``), QA outputs as
``start_logits`` / ``end_logits`` with the QA loss."""

from __future__ import annotations

import pytest
import torch

from transferlab.errors import CheckpointError, ConfigError
from transferlab.interop.hf import from_hf
from transferlab.models import ModelOutput, TransferModel, build_model, from_pretrained

T = pytest.importorskip("transformers")

V = 61


def _bert_config(**kw) -> "T.BertConfig":
    return T.BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=32, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, **kw)


def _pair(cls, config, seed: int = 0):
    torch.manual_seed(seed)
    hf = cls(config).eval()
    with torch.no_grad():  # random init leaves biases at 0: nudge every tensor so each one matters
        g = torch.Generator().manual_seed(seed)
        for p in hf.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return hf, from_hf(hf).eval()


@pytest.fixture(scope="module")
def models():
    return {
        "base": _pair(T.BertModel, _bert_config()),
        "classification": _pair(T.BertForSequenceClassification, _bert_config(num_labels=3)),
        "qa": _pair(T.BertForQuestionAnswering, _bert_config()),
        "gpt2": _pair(T.GPT2LMHeadModel, T.GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=32,
                                                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)),
        "bart": _pair(T.BartForConditionalGeneration, T.BartConfig(
            vocab_size=V, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=32,
            dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)),
    }


IDS = torch.tensor([[2, 7, 9, 11, 4, 3], [2, 5, 8, 13, 21, 3]])


def _close(a, b) -> None:
    if isinstance(a, (tuple, list)):
        assert isinstance(b, (tuple, list)) and len(a) == len(b)
        for x, y in zip(a, b):
            _close(x, y)
    else:
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


CASES = [  # name, forward kwargs (both libraries)
    ("base", dict()),
    ("base", dict(output_hidden_states=True)),
    ("classification", dict()),
    ("classification", dict(labels=torch.tensor([0, 2]))),
    ("qa", dict()),
    ("qa", dict(start_positions=torch.tensor([1, 3]), end_positions=torch.tensor([2, 40]))),  # 40: cut off
    ("gpt2", dict(use_cache=False)),
    ("gpt2", dict(use_cache=False, labels=IDS, output_hidden_states=True)),
    ("bart", dict(use_cache=False, decoder_input_ids=IDS[:, :4])),
    ("bart", dict(use_cache=False, labels=IDS[:, 1:5].contiguous())),
]


@pytest.mark.parametrize("name, kw", CASES, ids=[f"{n}-{','.join(k) or 'plain'}" for n, k in CASES])
def test_tuple_outputs_follow_transformers_order(models, name, kw):
    hf, ours = models[name]
    with torch.no_grad():
        want = hf(input_ids=IDS, return_dict=False, **kw)
        got = ours(input_ids=IDS, return_dict=False, **kw)
        out = ours(input_ids=IDS, **kw)
    assert isinstance(got, tuple) and len(got) == len(want)
    _close(got, want)
    _close(out[0], want[0])  # out[0]: the loss with labels, else the logits (or the base model's states)
    _close(out[:2], want[:2])
    _close(out.to_tuple(), want)
    hf_out = hf(input_ids=IDS, **kw)
    assert list(out.keys()) == [k for k in hf_out.keys() if k != "attentions"]  # same names, same order
    assert list(out) == list(out.keys())  # iterating yields keys, as transformers' ModelOutput


def test_qa_outputs_start_and_end_logits_and_keep_logits(models):
    hf, ours = models["qa"]
    with torch.no_grad():
        want, out = hf(input_ids=IDS), ours(input_ids=IDS)
    _close(out.start_logits, want.start_logits)
    _close(out["end_logits"], want.end_logits)
    assert out.logits.shape == (2, IDS.shape[1], 2)  # the existing (B, T, 2) field stays
    assert torch.equal(out.logits[..., 0], out.start_logits) and torch.equal(out.logits[..., 1], out.end_logits)
    sp, ep = torch.tensor([1, 3]), torch.tensor([2, 4])
    with torch.no_grad():
        loss = ours(input_ids=IDS, start_positions=sp, end_positions=ep).loss
    torch.testing.assert_close(loss, hf(input_ids=IDS, start_positions=sp, end_positions=ep).loss)


def test_output_keys_without_a_head_and_for_a_decoder():
    enc = build_model("bert-tiny", vocab_size=V, d_model=32, n_layers=1, n_heads=4, d_ff=64, heads={})
    out = enc(IDS)
    assert out.keys()[0] == "last_hidden_state" and torch.equal(out[0], out.last_hidden_state)
    dec = build_model("gpt-mini", vocab_size=V, d_model=32, n_layers=1, n_heads=4, d_ff=64, max_positions=32)
    out = dec(IDS, use_cache=True)
    assert out.keys() == ["logits", "past_key_values"] and out[1] is out.past_key_values
    with pytest.raises(KeyError):
        out["nope"]
    assert "logits" in out and "loss" not in out and len(out) == 2
    assert isinstance(out, ModelOutput) and out["loss"] is None  # a known field that is unset reads None


def test_dtype_and_device_properties():
    m = build_model("gpt-mini", vocab_size=V, d_model=32, n_layers=1, n_heads=4, d_ff=64, max_positions=32)
    assert m.dtype == torch.float32 and m.device == torch.device("cpu")
    assert m.to(torch.bfloat16).dtype == torch.bfloat16


@pytest.fixture(scope="module")
def saved(tmp_path_factory, models):
    """Our folder with bf16 weights and a transformers folder saved in bf16."""
    d = tmp_path_factory.mktemp("api")
    ours = build_model("gpt-mini", vocab_size=V, d_model=32, n_layers=1, n_heads=4, d_ff=64, max_positions=32)
    ours.to(torch.bfloat16).save_pretrained(d / "ours_bf16")
    hf = models["gpt2"][0]
    hf.to(torch.bfloat16).save_pretrained(d / "hf_bf16")
    hf.to(torch.float32)
    return d


@pytest.mark.parametrize("folder", ["ours_bf16", "hf_bf16"])
def test_from_pretrained_dtype(saved, folder):
    path = saved / folder
    assert from_pretrained(path).dtype == torch.float32  # the default, whatever the file holds
    for spelling in (torch.bfloat16, "bfloat16", "bf16", "torch.bfloat16"):
        assert from_pretrained(path, dtype=spelling).dtype == torch.bfloat16
    assert from_pretrained(path, torch_dtype=torch.float16).dtype == torch.float16  # the older name
    assert from_pretrained(path, dtype="auto").dtype == torch.bfloat16  # as saved
    if folder.startswith("ours"):
        assert TransferModel.from_pretrained(path, dtype=torch.bfloat16).dtype == torch.bfloat16
    else:  # models.model reads our folders only: transformers folders go through the one loader
        with pytest.raises(CheckpointError, match="transformers folder .* transferlab.from_pretrained"):
            TransferModel.from_pretrained(path)
    m32, m16 = from_pretrained(path), from_pretrained(path, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in m16.parameters())
    # bf16 weights read into float32 are exact: the bf16 model holds the same numbers
    assert all(torch.equal(a.to(torch.bfloat16), b) for a, b in zip(m32.parameters(), m16.parameters()))


def test_from_pretrained_auto_of_a_float32_folder_and_bad_dtypes(saved, tmp_path):
    m = build_model("gpt-mini", vocab_size=V, d_model=32, n_layers=1, n_heads=4, d_ff=64, max_positions=32)
    m.save_pretrained(tmp_path / "f32")
    assert from_pretrained(tmp_path / "f32", dtype="auto").dtype == torch.float32
    with pytest.raises(ConfigError, match="dtype must be torch.float32, torch.bfloat16, torch.float16"):
        from_pretrained(tmp_path / "f32", dtype="int8")
    with pytest.raises(ConfigError, match="dtype must be"):
        from_pretrained(tmp_path / "f32", dtype=torch.int64)
    with pytest.raises(ConfigError, match="dtype=.*and torch_dtype=.*disagree"):
        from_pretrained(tmp_path / "f32", dtype=torch.bfloat16, torch_dtype=torch.float16)


def test_models_from_pretrained_is_the_one_loader(saved):
    """``transferlab.models.from_pretrained`` is interop's loader (transformers folders, builtin:);
    ``models.model`` itself reads our folders and points elsewhere for the rest."""
    import transferlab
    import transferlab.models as models
    from transferlab.interop.loading import from_pretrained as one
    from transferlab.models import model as ours

    assert models.from_pretrained is one and transferlab.from_pretrained is one
    assert not hasattr(TransferModel, "export_hf")  # transferlab.interop.hf.export_hf(model, dir)
    assert one(saved / "hf_bf16").dtype == torch.float32
    with pytest.raises(CheckpointError, match="transformers folder"):
        ours.from_pretrained(saved / "hf_bf16")
    with pytest.raises(CheckpointError, match=r"built-in model; load it with transferlab.from_pretrained"):
        ours.from_pretrained("builtin:minilm")
