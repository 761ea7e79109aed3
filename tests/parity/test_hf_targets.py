"""More transformers targets, both ways, at tiny random sizes (issue 13, "more targets").

* import: LLaMA (+ Mistral), RoFormer, ELECTRA and DistilBERT checkpoints written by
  ``save_pretrained`` load with :func:`transferlab.from_pretrained`; logits and every hidden state
  agree with transformers within 1e-5 (``torch.testing.assert_close``), greedy ids for 20 tokens
  are identical for LLaMA.
* export: rotary/RMSNorm/SwiGLU decoders -> ``LlamaForCausalLM``, rotary encoders -> RoFormer,
  ELECTRA discriminators -> ``ElectraForPreTraining``, GPT classifiers ->
  ``GPT2ForSequenceClassification`` (right padding, pad id in the config), first-token classifiers
  -> ELECTRA/DistilBERT/RoFormer classes; the Auto classes load them with default arguments and
  no missing/unexpected keys, outputs agree, and they load back into ours with equal outputs.
* what cannot be represented is refused in one line naming the closest class and the switch.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch.testing import assert_close

transformers = pytest.importorskip("transformers")
T = transformers

import transferlab  # noqa: E402
from transferlab.cli import main as cli  # noqa: E402
from transferlab.errors import CheckpointError, ConfigError  # noqa: E402
from transferlab.interop.hf import export_hf, from_hf, to_hf_state  # noqa: E402
from transferlab.interop.hf.encoders import _to_halves, _to_pairs, roformer_table  # noqa: E402
from transferlab.models import build_model  # noqa: E402
from transferlab.models.blocks import apply_rotary, rotary_cos_sin  # noqa: E402

V = 101
PAD = 0


def _close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    assert_close(b, a, atol=1e-5, rtol=0, msg=lambda m: f"{what}: {m}")


def _perturb(model: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    """Random init leaves biases at 0 and norms at 1: nudge every parameter so all of them matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


def _reinit(model: torch.nn.Module, std: float) -> torch.nn.Module:
    """Wide random matrices, so greedy decoding of a tiny model does not repeat one token."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2 and p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, V, (3, 11), generator=g)  # never the pad id 0
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # right padding of different lengths
    mask[2, 4:] = 0
    types = torch.zeros_like(ids)
    types[:, 5:] = 1
    return {"ids": ids.masked_fill(mask == 0, PAD), "mask": mask, "types": types}


def _kw(b: dict, types: bool) -> dict:
    kw = {"input_ids": b["ids"], "attention_mask": b["mask"]}
    return {**kw, "token_type_ids": b["types"]} if types else kw


# ---------------------------------------------------------------------------- tiny configs
def _llama_cfg(**kw):
    return T.LlamaConfig(**{**dict(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                   num_attention_heads=4, max_position_embeddings=64, bos_token_id=1,
                                   eos_token_id=3, pad_token_id=PAD), **kw})


def _mistral_cfg(**kw):
    return T.MistralConfig(**{**dict(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                                     sliding_window=None, pad_token_id=PAD), **kw})


def _roformer_cfg(**kw):
    return T.RoFormerConfig(**{**dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=48, max_position_embeddings=64), **kw})


def _electra_cfg(**kw):
    return T.ElectraConfig(**{**dict(vocab_size=V, embedding_size=32, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=48, max_position_embeddings=64), **kw})


SMALL_EMB = dict(embedding_size=16)  # hidden_size stays 32: ELECTRA-Small's 128 / 256 in miniature


def _distil_cfg(**kw):
    return T.DistilBertConfig(**{**dict(vocab_size=V, dim=32, n_layers=2, n_heads=4, hidden_dim=48,
                                        max_position_embeddings=64), **kw})


def _logits(o):
    return o.logits


def _qa(o):
    return torch.stack([o.start_logits, o.end_logits], dim=-1)


# name: (builder, token types?, extract, our head)
FROM_HF = {
    "llama-lm": (lambda: T.LlamaForCausalLM(_llama_cfg()), False, _logits, "lm"),
    "llama-lm-tied-bias-theta": (lambda: T.LlamaForCausalLM(_llama_cfg(
        tie_word_embeddings=True, attention_bias=True, mlp_bias=True, rope_parameters={"rope_type": "default",
                                                                                     "rope_theta": 500.0})),
        False, _logits, "lm"),
    "llama-head-dim-16": (lambda: T.LlamaForCausalLM(_llama_cfg(head_dim=16)), False, _logits, "lm"),
    "llama-seqcls": (lambda: T.LlamaForSequenceClassification(_llama_cfg(num_labels=3)), False, _logits,
                     "classification"),
    "llama-tokcls": (lambda: T.LlamaForTokenClassification(_llama_cfg(num_labels=5)), False, _logits,
                     "token_classification"),
    "gpt2-seqcls": (lambda: T.GPT2ForSequenceClassification(T.GPT2Config(
        vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=64, pad_token_id=PAD, num_labels=3)),
        False, _logits, "classification"),
    "mistral-lm": (lambda: T.MistralForCausalLM(_mistral_cfg()), False, _logits, "lm"),
    "qwen2-lm": (lambda: T.Qwen2ForCausalLM(T.Qwen2Config(
        vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=64, pad_token_id=PAD)), False, _logits, "lm"),
    "roformer-model": (lambda: T.RoFormerModel(_roformer_cfg()), True, lambda o: o.last_hidden_state, None),
    "roformer-mlm": (lambda: T.RoFormerForMaskedLM(_roformer_cfg()), True, _logits, "lm"),
    "roformer-seqcls-relu": (lambda: T.RoFormerForSequenceClassification(_roformer_cfg(num_labels=3, hidden_act="relu")),
                             True, _logits, "classification"),
    "roformer-tokcls": (lambda: T.RoFormerForTokenClassification(_roformer_cfg(num_labels=5)), True, _logits,
                        "token_classification"),
    "roformer-qa": (lambda: T.RoFormerForQuestionAnswering(_roformer_cfg()), True, _qa, "span"),
    "electra-model": (lambda: T.ElectraModel(_electra_cfg()), True, lambda o: o.last_hidden_state, None),
    "electra-pretraining": (lambda: T.ElectraForPreTraining(_electra_cfg()), True, _logits, "rtd"),
    "electra-mlm": (lambda: T.ElectraForMaskedLM(_electra_cfg()), True, _logits, "lm"),
    "electra-seqcls": (lambda: T.ElectraForSequenceClassification(_electra_cfg(num_labels=3)), True, _logits,
                       "classification"),
    "electra-tokcls": (lambda: T.ElectraForTokenClassification(_electra_cfg(num_labels=5)), True, _logits,
                       "token_classification"),
    "electra-qa": (lambda: T.ElectraForQuestionAnswering(_electra_cfg()), True, _qa, "span"),
    # ELECTRA-Small layout: embedding_size != hidden_size, an embeddings_project into the stack
    "electra-small-model": (lambda: T.ElectraModel(_electra_cfg(**SMALL_EMB)), True, lambda o: o.last_hidden_state,
                            None),
    "electra-small-pretraining": (lambda: T.ElectraForPreTraining(_electra_cfg(**SMALL_EMB)), True, _logits, "rtd"),
    "electra-small-mlm": (lambda: T.ElectraForMaskedLM(_electra_cfg(**SMALL_EMB)), True, _logits, "lm"),
    "electra-small-mlm-untied": (lambda: T.ElectraForMaskedLM(_electra_cfg(**SMALL_EMB, tie_word_embeddings=False)),
                                 True, _logits, "lm"),
    "electra-small-seqcls": (lambda: T.ElectraForSequenceClassification(_electra_cfg(**SMALL_EMB, num_labels=3)),
                             True, _logits, "classification"),
    "electra-small-tokcls": (lambda: T.ElectraForTokenClassification(_electra_cfg(**SMALL_EMB, num_labels=5)),
                             True, _logits, "token_classification"),
    "electra-small-qa": (lambda: T.ElectraForQuestionAnswering(_electra_cfg(**SMALL_EMB)), True, _qa, "span"),
    "distilbert-model": (lambda: T.DistilBertModel(_distil_cfg()), False, lambda o: o.last_hidden_state, None),
    "distilbert-mlm-sinusoidal": (lambda: T.DistilBertForMaskedLM(_distil_cfg(sinusoidal_pos_embds=True)), False,
                                  _logits, "lm"),
    "distilbert-mlm-untied-relu": (lambda: T.DistilBertForMaskedLM(_distil_cfg(tie_word_embeddings=False,
                                                                               activation="relu")),
                                   False, _logits, "lm"),
    "distilbert-seqcls": (lambda: T.DistilBertForSequenceClassification(_distil_cfg(num_labels=3)), False, _logits,
                          "classification"),
    "distilbert-tokcls": (lambda: T.DistilBertForTokenClassification(_distil_cfg(num_labels=5)), False, _logits,
                          "token_classification"),
    "distilbert-qa": (lambda: T.DistilBertForQuestionAnswering(_distil_cfg()), False, _qa, "span"),
}


@pytest.mark.parametrize("case", list(FROM_HF))
def test_checkpoint_imports_with_equal_outputs(case, batch, tmp_path):
    build, types, extract, head = FROM_HF[case]
    torch.manual_seed(0)
    hf = _perturb(build()).eval()
    hf.save_pretrained(tmp_path)
    ours = transferlab.from_pretrained(tmp_path)
    assert ours.hf_source["architecture"] == type(hf).__name__
    assert list(ours.config.heads) == ([head] if head else [])
    kw = _kw(batch, types)
    valid = batch["mask"].bool()
    with torch.no_grad():
        ho = hf(**kw, output_hidden_states=True)
        oo = ours(**kw, output_hidden_states=True)
    a, b = extract(ho), (oo.logits if head else oo.last_hidden_state)
    if a.dim() == 3 or (a.dim() == 2 and a.shape == batch["ids"].shape):  # per-token outputs
        a, b = a[valid], b[valid]
    _close(a, b, f"{case} logits")
    assert len(ho.hidden_states) == len(oo.hidden_states) == 3
    for i, (x, y) in enumerate(zip(ho.hidden_states, oo.hidden_states)):
        _close(x[valid], y[valid], f"{case} hidden state {i}")


def test_llama_greedy_generation_matches_both_ways(batch, tmp_path):
    prompts = batch["ids"][:, :6].clamp(min=4)
    left = torch.ones_like(prompts)
    left[1, :2] = 0  # left-padded prompts, as decoders take them
    left[2, :4] = 0
    prompts = prompts.masked_fill(left == 0, PAD)
    torch.manual_seed(0)
    hf = _reinit(_perturb(T.LlamaForCausalLM(_llama_cfg())), 0.5).eval()
    ours = from_hf(hf)
    with torch.no_grad():
        want = hf.generate(input_ids=prompts, attention_mask=left, max_new_tokens=20, do_sample=False, num_beams=1)
    got = ours.generate(prompts, attention_mask=left, max_new_tokens=20)
    assert torch.equal(got, want), f"greedy ids differ\n{got}\n{want}"
    assert want.shape[1] == prompts.shape[1] + 20
    assert sum(len(set(r)) for r in want[:, -20:].tolist()) >= 8  # not one token repeated
    # and ours -> transformers: the exported directory generates the same ids
    back = T.AutoModelForCausalLM.from_pretrained(export_hf(ours, tmp_path / "hf")).eval()
    with torch.no_grad():
        again = back.generate(input_ids=prompts, attention_mask=left, max_new_tokens=20, do_sample=False, num_beams=1)
    assert torch.equal(again, want)


# ---------------------------------------------------------------------------- ours -> transformers
SMALL = dict(vocab_size=V, d_model=32, n_layers=2, n_heads=4, d_ff=48, max_positions=64, dropout=0.0,
             attention_dropout=0.0)
LLAMA_LIKE = dict(position="rotary", norm="rmsnorm", norm_eps=1e-6, activation="swiglu", bias=False, pad_token_id=PAD)
CLS3 = {"classification": {"num_labels": 3}}
# name: (preset, overrides, Auto class, expected class, token types?, extract)
TO_HF = {
    "llama-lm": ("gpt-mini", {**LLAMA_LIKE, "tie_embeddings": False}, "AutoModelForCausalLM", "LlamaForCausalLM",
                 False, _logits),
    "llama-lm-tied-bias-dhead": ("gpt-mini", {**LLAMA_LIKE, "bias": True, "d_head": 16, "rotary_base": 500.0},
                                 "AutoModelForCausalLM", "LlamaForCausalLM", False, _logits),
    "llama-backbone": ("gpt-mini", {**LLAMA_LIKE, "heads": {}}, "AutoModel", "LlamaModel", False,
                       lambda o: o.last_hidden_state),
    "llama-tokcls": ("gpt-mini", {**LLAMA_LIKE, "heads": {"token_classification": {"num_labels": 5}}},
                     "AutoModelForTokenClassification", "LlamaForTokenClassification", False, _logits),
    "gpt2-seqcls": ("gpt-mini", {"heads": CLS3, "pad_token_id": PAD}, "AutoModelForSequenceClassification",
                    "GPT2ForSequenceClassification", False, _logits),
    "roformer-mlm": ("bert-tiny", {"position": "rotary", "pooler": False}, "AutoModelForMaskedLM",
                     "RoFormerForMaskedLM", True, _logits),
    "roformer-mlm-no-segments": ("bert-tiny", {"position": "rotary", "type_vocab_size": 0}, "AutoModelForMaskedLM",
                                 "RoFormerForMaskedLM", False, _logits),
    "roformer-seqcls": ("bert-tiny", {"position": "rotary", "pooler": False,
                                      "heads": {"classification": {"num_labels": 3, "dense_act": "gelu"}}},
                        "AutoModelForSequenceClassification", "RoFormerForSequenceClassification", True, _logits),
    "roformer-qa": ("bert-tiny", {"position": "rotary", "heads": {"span": {}}}, "AutoModelForQuestionAnswering",
                    "RoFormerForQuestionAnswering", True, _qa),
    # as `pretrain --objective electra` leaves it: bert preset (with its unused pooler) + rtd
    "electra-discriminator": ("bert-tiny", {"heads": {"rtd": {}}}, "AutoModelForPreTraining",
                              "ElectraForPreTraining", True, _logits),
    "electra-seqcls": ("bert-tiny", {"pooler": False, "heads": {"classification": {"num_labels": 3,
                                                                                   "dense_act": "gelu"}}},
                       "AutoModelForSequenceClassification", "ElectraForSequenceClassification", True, _logits),
    # embedding_size != d_model: ELECTRA-Small's embeddings_project (and, for MLM, a transform to E)
    "electra-small-discriminator": ("bert-tiny", {"embedding_size": 16, "heads": {"rtd": {}}},
                                    "AutoModelForPreTraining", "ElectraForPreTraining", True, _logits),
    "electra-small-mlm": ("bert-tiny", {"embedding_size": 16, "pooler": False}, "AutoModelForMaskedLM",
                          "ElectraForMaskedLM", True, _logits),
    "electra-small-seqcls": ("bert-tiny", {"embedding_size": 16, "pooler": False,
                                           "heads": {"classification": {"num_labels": 3, "dense_act": "gelu"}}},
                             "AutoModelForSequenceClassification", "ElectraForSequenceClassification", True, _logits),
    "electra-small-tokcls": ("bert-tiny", {"embedding_size": 16, "pooler": False,
                                           "heads": {"token_classification": {"num_labels": 5}}},
                             "AutoModelForTokenClassification", "ElectraForTokenClassification", True, _logits),
    "electra-small-qa": ("bert-tiny", {"embedding_size": 16, "pooler": False, "heads": {"span": {}}},
                         "AutoModelForQuestionAnswering", "ElectraForQuestionAnswering", True, _qa),
    "electra-small-backbone": ("bert-tiny", {"embedding_size": 16, "pooler": False, "heads": {}}, "AutoModel",
                               "ElectraModel", True, lambda o: o.last_hidden_state),
    "distilbert-seqcls": ("bert-tiny", {"pooler": False, "type_vocab_size": 0,
                                        "heads": {"classification": {"num_labels": 3, "dense_act": "relu"}}},
                          "AutoModelForSequenceClassification", "DistilBertForSequenceClassification", False, _logits),
}


@pytest.mark.parametrize("case", list(TO_HF))
def test_export_loads_in_transformers_with_equal_outputs(case, batch, tmp_path):
    preset, extra, auto, arch, types, extract = TO_HF[case]
    torch.manual_seed(0)
    ours = _perturb(build_model(preset, **{**SMALL, **extra})).eval()
    out = export_hf(ours, tmp_path / "hf")
    assert json.loads((out / "config.json").read_text())["architectures"] == [arch]
    hf, info = getattr(T, auto).from_pretrained(out, output_loading_info=True)  # default arguments only
    hf.eval()
    assert type(hf).__name__ == arch
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    kw = _kw(batch, types)
    valid = batch["mask"].bool()
    pick = (lambda o: o.last_hidden_state) if case.endswith("backbone") else (lambda o: o.logits)
    again = transferlab.from_pretrained(out)  # and back again, from the directory transformers read
    with torch.no_grad():
        a, b, c = extract(hf(**kw)), pick(ours(**kw)), pick(again(**kw))
    if a.shape[:2] == batch["ids"].shape:  # per-token outputs: padding rows are undefined
        a, b, c = a[valid], b[valid], c[valid]
    _close(a, b, f"{case} exported outputs")
    _close(b, c, f"{case} round trip")


def test_gpt2_classifier_bias_is_folded_into_ln_f_and_right_padding_finds_the_last_token(batch, tmp_path):
    torch.manual_seed(0)
    ours = _perturb(build_model("gpt-mini", **SMALL, heads=CLS3, pad_token_id=PAD), scale=0.5).eval()
    bias = ours.heads["classification"].classifier.bias
    assert bias.abs().min() > 1e-3  # the bias is real, so the fold is exercised
    cfg, state = to_hf_state(ours)
    assert cfg["pad_token_id"] == PAD and "score.bias" not in state
    out = export_hf(ours, tmp_path / "hf")
    hf = T.AutoModelForSequenceClassification.from_pretrained(out).eval()
    with torch.no_grad():
        want = ours(**_kw(batch, False)).logits
        _close(hf(**_kw(batch, False)).logits, want, "right-padded gpt2 classifier")
        # the padded rows are classified at their own last token, not at the end of the row
        short = ours(input_ids=batch["ids"][2:, :4]).logits
    _close(short, want[2:], "last non-pad token")


def test_rotary_pair_permutation_preserves_scores():
    """Interleaved (RoFormer) and rotate-half (ours, LLaMA) rotary give equal q.k after the row
    permutation the RoFormer layout applies to q and k weights."""
    cfg = build_model("bert-tiny", **SMALL, position="rotary").config
    g = torch.Generator().manual_seed(0)
    w = torch.randn(32, 32, generator=g) * 0.1
    assert torch.equal(_to_halves(_to_pairs(w, cfg), cfg), w)
    x = torch.randn(1, 5, 32, generator=g)
    pos = torch.arange(5)[None]
    cos, sin = rotary_cos_sin(pos, 8, 10000.0, torch.float32)
    q = (x @ w.t()).view(1, 5, 4, 8).transpose(1, 2)
    ours = apply_rotary(q, cos, sin)
    # RoFormer's formula on the permuted projection
    qp = (x @ _to_pairs(w, cfg).t()).view(1, 5, 4, 8).transpose(1, 2)
    table = roformer_table(5, 8)[None, None]
    s, c = table.chunk(2, dim=-1)
    s2, c2 = torch.stack([s, s], -1).reshape(table.shape), torch.stack([c, c], -1).reshape(table.shape)
    theirs = qp * c2 + torch.stack([-qp[..., 1::2], qp[..., ::2]], -1).reshape(qp.shape) * s2
    _close(theirs @ theirs.transpose(-1, -2), ours @ ours.transpose(-1, -2), "rotary scores")


# ---------------------------------------------------------------------------- refusals
def _save(tmp_path, model):
    model.save_pretrained(tmp_path / "hf")
    return tmp_path / "hf"


@pytest.mark.parametrize("build,match", [
    (lambda: T.LlamaForCausalLM(_llama_cfg(num_key_value_heads=2)),
     r"num_key_value_heads=2 < num_attention_heads=4 \(grouped-query attention\) is not supported"),
    (lambda: T.LlamaForCausalLM(_llama_cfg(rope_parameters={"rope_type": "linear", "factor": 2.0,
                                                            "rope_theta": 10000.0})),
     r"rope_type='linear' \(rope scaling\) is not supported"),
    (lambda: T.LlamaForCausalLM(_llama_cfg(attention_bias=True)), r"attention_bias=True with mlp_bias=False"),
    (lambda: T.MistralForCausalLM(_mistral_cfg(sliding_window=16)), r"sliding_window=16 < max_position_embeddings"),
    (lambda: T.RoFormerForMaskedLM(_roformer_cfg(rotary_value=True)), r"rotary_value=true"),
])
def test_unrepresentable_checkpoints_are_refused_in_one_line(build, match, tmp_path):
    d = _save(tmp_path, build())
    with pytest.raises(CheckpointError, match=match):
        transferlab.from_pretrained(d)
    assert cli(["info", str(d)]) == 2


@pytest.mark.parametrize("overrides,match", [
    # mean pooling: no transformers class; the nearest one and what to do
    ({"heads": {"classification": {"num_labels": 2, "pooling": "mean"}}},
     r"mean-pooled classifier has no transformers class: BertForSequenceClassification classifies the \[CLS\] "
     r"pooler output; fine-tune with --pooling cls"),
    # a rotary encoder with another base: RoFormer fixes 10000
    ({"position": "rotary", "rotary_base": 500.0}, r"as roformer it would need rotary_base=10000.0, got 500.0"),
    # a llama-like decoder with a non-gated MLP
    ({"family": "decoder", "prenorm": True, "embedding_norm": False, "final_norm": True, "type_vocab_size": 0,
      "lm_head_transform": False, "lm_head_bias": False, "pooler": False, **LLAMA_LIKE, "activation": "gelu"},
     r"as llama it would need activation=swiglu, got gelu"),
    # ELECTRA's classifier is dense + gelu on the first token, not the tanh pooler
    ({"pooler": False, "heads": {"classification": {"num_labels": 2}}},
     r"BertForSequenceClassification classifies the pooler output: needs pooler=true"),
])
def test_models_without_an_exact_class_are_refused_naming_the_nearest(overrides, match):
    with pytest.raises(ConfigError, match=match):
        to_hf_state(build_model("bert-tiny", **{**SMALL, **overrides}))


def test_llama_classifier_with_bias_is_refused_and_without_bias_exports(batch, tmp_path):
    ours = _perturb(build_model("gpt-mini", **SMALL, **LLAMA_LIKE, heads=CLS3)).eval()
    with pytest.raises(ConfigError, match=r"LlamaForSequenceClassification's score layer has no bias"):
        to_hf_state(ours)
    with torch.no_grad():
        ours.heads["classification"].classifier.bias.zero_()
    hf = T.AutoModelForSequenceClassification.from_pretrained(export_hf(ours, tmp_path / "hf")).eval()
    with torch.no_grad():
        _close(hf(**_kw(batch, False)).logits, ours(**_kw(batch, False)).logits, "llama classifier")


def test_cli_convert_llama_both_ways_and_info(tmp_path, batch, capsys):
    hf = _perturb(T.LlamaForCausalLM(_llama_cfg())).eval()
    hf.save_pretrained(tmp_path / "hf")
    assert cli(["convert", "--from-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "ours")]) == 0
    assert "llama LlamaForCausalLM" in capsys.readouterr().out
    assert cli(["convert", "--to-hf", str(tmp_path / "ours"), "--out", str(tmp_path / "back")]) == 0
    back = T.AutoModelForCausalLM.from_pretrained(tmp_path / "back").eval()
    assert type(back).__name__ == "LlamaForCausalLM"
    with torch.no_grad():
        _close(back(input_ids=batch["ids"]).logits, hf(input_ids=batch["ids"]).logits, "cli round trip")
    assert cli(["info", str(tmp_path / "hf")]) == 0
    out = capsys.readouterr().out
    assert "transformers llama (LlamaForCausalLM)" in out and "to-hf         LlamaForCausalLM (llama)" in out
    # info says which class an export would be, or why there is none
    assert cli(["info", str(tmp_path / "ours"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["hf_export"] == "LlamaForCausalLM (llama)"
    model = build_model("bert-tiny", **SMALL, heads={"classification": {"num_labels": 2, "pooling": "mean"}})
    model.save_pretrained(tmp_path / "mean")
    assert cli(["info", str(tmp_path / "mean")]) == 0
    assert "to-hf         none (a mean-pooled classifier has no transformers class" in capsys.readouterr().out


def test_mean_pooled_classifier_documented_mapping_through_sentence_transformers(batch, tmp_path):
    """docs/models.md: a mean-pooled classifier exports as its encoder; sentence-transformers'
    mean Pooling over transformers' output, then our classifier weights, gives our logits."""
    Pooling = pytest.importorskip("sentence_transformers.sentence_transformer.modules").Pooling
    torch.manual_seed(0)
    ours = _perturb(build_model("bert-tiny", **SMALL, heads={"classification": {"num_labels": 3,
                                                                                "pooling": "mean"}})).eval()
    with torch.no_grad():
        want = ours(**_kw(batch, True)).logits
    with pytest.raises(ConfigError, match="mean-pooled classifier"):
        export_hf(ours, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()  # nothing half-written
    w = ours.heads["classification"].classifier.weight.detach().clone()
    b = ours.heads["classification"].classifier.bias.detach().clone()
    ours.remove_head("classification")
    hf = T.AutoModel.from_pretrained(export_hf(ours, tmp_path / "enc")).eval()
    pooling = Pooling(32, pooling_mode="mean")
    with torch.no_grad():
        h = hf(**_kw(batch, True)).last_hidden_state
        emb = pooling({"token_embeddings": h, "attention_mask": batch["mask"]})["sentence_embedding"]
    _close(emb @ w.t() + b, want, "mean pooling + classifier")


def test_readme_rotary_bert_exports_as_roformer_and_its_pooler_classifier_is_refused_clearly():
    """README step 3 pre-trains bert-mini with model.position=rotary: the MLM exports to
    RoFormerForMaskedLM; a classifier on its tanh pooler has no RoFormer class (RoFormer
    classifies dense + hidden_act of the first token) and the refusal says what would fit."""
    m = build_model("bert-mini", vocab_size=V, position="rotary")
    cfg, _ = to_hf_state(m)
    assert cfg["architectures"] == ["RoFormerForMaskedLM"] and cfg["model_type"] == "roformer"
    m.remove_head("lm")
    m.add_head("classification", num_labels=2)
    with pytest.raises(ConfigError, match=r"RoFormerForSequenceClassification classifies the first token through "
                                          r"dense \+ gelu \(no tanh pooler\): needs pooler=false.*dense_act='gelu'"):
        to_hf_state(m)


def test_wrong_type_in_a_transformers_config_is_one_line(tmp_path):
    d = _save(tmp_path, T.LlamaForCausalLM(_llama_cfg()))
    cfg = json.loads((d / "config.json").read_text())
    cfg["num_attention_heads"] = "four"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"config.json: (a llama field has the wrong type or value|num_attention_heads: expected a number)"):
        transferlab.from_pretrained(d)
    assert cli(["info", str(d)]) == 2


# ---------------------------------------------------------------------------- embedding projection
def test_embedding_projection_saves_and_loads_with_equal_outputs(batch, tmp_path):
    """Our own model with embedding_size set: (V, E) tables, emb_proj (E -> d), an MLM transform
    d -> E tied to the (V, E) embedding; save_pretrained/from_pretrained keep config and outputs."""
    torch.manual_seed(0)
    ours = _perturb(build_model("bert-tiny", **SMALL, embedding_size=16, pooler=False)).eval()
    stack = ours.backbone.encoder
    assert ours.backbone.embed_tokens.weight.shape == (V, 16)
    assert stack.pos_emb.weight.shape[1] == stack.type_emb.weight.shape[1] == stack.emb_norm.weight.shape[0] == 16
    assert stack.emb_proj.weight.shape == (32, 16)
    lm = ours.heads["lm"]
    assert lm.transform.dense.weight.shape == (16, 32) and lm.output_weight is ours.backbone.embed_tokens.weight
    ours.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["embedding_size"] == 16
    again = transferlab.from_pretrained(tmp_path / "m").eval()
    assert again.config.embedding_size == 16
    kw = _kw(batch, True)
    with torch.no_grad():
        a, b = ours(**kw, output_hidden_states=True), again(**kw, output_hidden_states=True)
    assert torch.equal(a.logits, b.logits)
    assert all(torch.equal(x, y) for x, y in zip(a.hidden_states, b.hidden_states))
    assert a.hidden_states[0].shape[-1] == 32  # the stack's input: after the projection, as in HF
    with torch.no_grad():  # inputs_embeds are E wide, as HF's ElectraModel takes them
        e = ours.get_input_embeddings()(batch["ids"])
        c = ours(inputs_embeds=e, attention_mask=batch["mask"], token_type_ids=batch["types"])
    assert e.shape[-1] == 16 and torch.equal(c.logits, a.logits)


def test_default_model_has_no_projection_and_same_width_is_no_projection():
    plain = build_model("bert-tiny", **SMALL)
    assert plain.config.embedding_size is None and plain.backbone.encoder.emb_proj is None
    assert not any("emb_proj" in k for k in plain.state_dict())
    same = build_model("bert-tiny", **SMALL, embedding_size=32)  # = d_model: nothing to project
    assert same.config.embedding_size is None and same.backbone.encoder.emb_proj is None


@pytest.mark.parametrize("overrides,match", [
    ({"embedding_size": 0}, r"model\.embedding_size: "),
    ({"embedding_size": 16, "family": "decoder", "type_vocab_size": 0},
     r"model\.embedding_size=16 .* only supported for encoders"),
    ({"embedding_size": 16, "lm_head_transform": False},
     r"embedding_size=16 != d_model=32 needs lm_head_transform=true"),
])
def test_bad_embedding_size_is_refused_in_one_line(overrides, match):
    with pytest.raises(ConfigError, match=match):
        build_model("bert-tiny", **{**SMALL, **overrides})


def test_embedding_projection_exports_only_as_electra():
    """BERT and RoFormer have no embeddings_project: such a model is ELECTRA or nothing."""
    with pytest.raises(ConfigError, match=r"embedding_size=None, got 16"):
        to_hf_state(build_model("bert-tiny", **SMALL, embedding_size=16, pooler=True, position="rotary"))
    cfg, state = to_hf_state(build_model("bert-tiny", **SMALL, embedding_size=16, pooler=False))
    assert cfg["model_type"] == "electra" and cfg["embedding_size"] == 16 and cfg["hidden_size"] == 32
    assert state["electra.embeddings_project.weight"].shape == (32, 16)

