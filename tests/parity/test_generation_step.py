"""The lean decode step (``models/decode_step.py``'s ``_DecodeStep``): same logits as the module
path for every block variant it covers (pre/post-norm, learned/sinusoidal/rotary positions, gated
MLPs, cross-attention, left padding, beams), bf16 attention in float32, the prepacked oneDNN
linears, and the module path kept for what it does not cover."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from transferlab.models import build_model
from transferlab.models import decode_step as D

V = 61
SMALL = dict(vocab_size=V, d_model=32, n_heads=4, d_ff=64, dropout=0.0, attention_dropout=0.0)


def _perturb(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random init leaves biases at 0 and norms at 1: nudge everything so every tensor matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


MODELS = {
    "gpt2": lambda: build_model("gpt-mini", n_layers=2, **SMALL),  # pre-norm, learned, tied head
    "postnorm-untied": lambda: build_model(  # BERT-like decoder: post-norm, embedding norm, own head
        "gpt-mini", n_layers=2, prenorm=False, embedding_norm=True, final_norm=False, tie_embeddings=False,
        lm_head_bias=True, activation="relu", scale_embeddings=True, **SMALL),
    "rotary-swiglu-rms": lambda: build_model(  # Llama-like
        "gpt-mini", n_layers=2, position="rotary", activation="swiglu", norm="rmsnorm", bias=False, **SMALL),
    "sinusoidal-math": lambda: build_model("gpt-mini", n_layers=2, position="sinusoidal", attn_impl="math", **SMALL),
    "bart": lambda: build_model("bart-mini", n_layers=2, eos_token_id=2, decoder_start_token_id=2, pad_token_id=1,
                                **SMALL),
}


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {name: _perturb(make(), i) for i, (name, make) in enumerate(MODELS.items())}


def _prompts(seq2seq: bool, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two prompts of lengths 7 and 4: left-padded for decoders, right-padded for encoders."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, V, (2, 7), generator=g)
    lengths = torch.tensor([7, 4])[:, None]
    pos = torch.arange(7)[None]
    mask = (pos < lengths if seq2seq else pos >= 7 - lengths).long()
    return ids.masked_fill(mask == 0, pad), mask


@pytest.fixture
def step_calls(monkeypatch):
    """Count calls of the decode step, so a test knows which path produced its tokens."""
    calls = []
    real = D._DecodeStep.__call__

    def counted(self, *a, **k):
        calls.append(1)
        return real(self, *a, **k)

    monkeypatch.setattr(D._DecodeStep, "__call__", counted)
    return calls


def _module_path(monkeypatch) -> None:
    monkeypatch.setattr(D._DecodeStep, "unsupported", staticmethod(lambda backbone: "test: the module path"))


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("settings", [dict(), dict(num_beams=3, num_return_sequences=2)], ids=["greedy", "beams"])
@pytest.mark.parametrize("padded", [True, False], ids=["padded", "unpadded"])
def test_decode_step_gives_the_module_paths_logits(models, name, settings, padded, step_calls, monkeypatch):
    m = models[name]
    ids, mask = _prompts(m.config.is_encoder_decoder, m.config.pad_token_id)
    if not padded:
        ids, mask = ids[:1], None
    kw = dict(max_new_tokens=9, eos_token_id=[], return_dict_in_generate=True, output_scores=True, **settings)
    lean = m.generate(ids, mask, **kw)
    assert len(step_calls) == 8  # every token after the prefill's first one
    _module_path(monkeypatch)
    ref = m.generate(ids, mask, **kw)
    assert len(step_calls) == 8
    assert torch.equal(lean.sequences, ref.sequences)
    for a, b in zip(lean.scores, ref.scores):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-5)


def test_bfloat16_models_attend_in_float32_and_stay_close_to_the_module_path(models, monkeypatch):
    m = build_model("gpt-mini", n_layers=2, **SMALL)
    m.load_state_dict(models["gpt2"].state_dict())
    m = m.to(torch.bfloat16).eval()
    ids, mask = _prompts(False, 0)
    kw = dict(max_new_tokens=2, eos_token_id=[], return_dict_in_generate=True, output_scores=True)
    lean = m.generate(ids, mask, **kw)
    _module_path(monkeypatch)
    ref = m.generate(ids, mask, **kw)
    assert torch.equal(lean.scores[0], ref.scores[0])  # the prompt's logits: the same modules
    assert torch.equal(lean.sequences[:, :8], ref.sequences[:, :8])
    # the second token's logits: bf16 linears on both sides, float32 vs bf16 attention
    assert lean.scores[1].dtype == torch.float32
    torch.testing.assert_close(lean.scores[1], ref.scores[1], atol=0.05, rtol=0.02)

    step = D._DecodeStep(m.backbone, m.heads["lm"], 2)
    cache = m.backbone.new_cache(2, 8, torch.bfloat16, torch.device("cpu"))
    step.adopt(cache)
    assert step.attn_dtype == torch.float32 and cache.layers[0].k.dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 5])
@pytest.mark.parametrize("bias", [True, False])
def test_prepacked_linear_computes_f_linear(dtype, rows, bias):
    g = torch.Generator().manual_seed(2)
    w = torch.randn(48, 32, generator=g).to(dtype)
    b = torch.randn(48, generator=g).to(dtype) if bias else None
    x = torch.randn(rows, 32, generator=g).to(dtype)
    lin = D._Linear(w, b, rows=1, pack=True)  # the row count is only a layout hint
    assert lin.packed == D._packable(torch.device("cpu"), dtype)
    with torch.inference_mode():
        y = lin(x)
    ref = F.linear(x.double(), w.double(), b.double() if bias else None)
    assert y.shape == (rows, 48) and y.dtype == dtype
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=0.1, rtol=0.02)
    torch.testing.assert_close(y.double(), ref, **tol)
    unpacked = D._Linear(w, b, rows=1, pack=False)
    assert not unpacked.packed and torch.equal(unpacked(x), F.linear(x, w, b))


def test_generation_without_packed_weights_gives_the_same_tokens(models, monkeypatch):
    m = models["gpt2"]
    ids, mask = _prompts(False, 0)
    kw = dict(max_new_tokens=9, eos_token_id=[], return_dict_in_generate=True, output_scores=True)
    packed = m.generate(ids, mask, **kw)
    monkeypatch.setattr(D, "_packable", lambda device, dtype: False)
    plain = m.generate(ids, mask, **kw)
    assert torch.equal(packed.sequences, plain.sequences)
    for a, b in zip(packed.scores, plain.scores):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-5)


def test_t5_relative_positions_keep_the_module_path(step_calls):
    m = _perturb(build_model("t5-mini", n_layers=2, d_head=8, eos_token_id=1, **SMALL), 7)
    assert D._DecodeStep.unsupported(m.backbone) == "relative position bias (T5)"
    assert m.backbone.fast_decode_step(m.heads["lm"], 2) is None
    ids = torch.randint(3, V, (2, 5), generator=torch.Generator().manual_seed(3))
    a = m.generate(ids, max_new_tokens=6, eos_token_id=[])
    b = m.generate(ids, max_new_tokens=6, eos_token_id=[], use_cache=False)
    assert step_calls == [] and torch.equal(a, b)


def test_short_generations_skip_the_step_or_its_packing(models, step_calls, monkeypatch):
    built = []
    real = D._DecodeStep.__init__
    monkeypatch.setattr(D._DecodeStep, "__init__", lambda self, *a, **k: (built.append(self), real(self, *a, **k))[1])
    ids = torch.randint(3, V, (1, 4), generator=torch.Generator().manual_seed(4))
    assert models["gpt2"].generate(ids, max_new_tokens=1, eos_token_id=[]).shape == (1, 5)
    assert built == [] and step_calls == []
    models["gpt2"].generate(ids, max_new_tokens=2, eos_token_id=[])  # one step: packing would not pay
    assert len(built) == 1 and step_calls == [1] and not built[0].head.packed
    models["gpt2"].generate(ids, max_new_tokens=8, eos_token_id=[])
    assert built[1].head.packed == D._packable(torch.device("cpu"), torch.float32)


# ---------------------------------------------------------------------------------- compile=True
@pytest.fixture
def static_eager(monkeypatch):
    """``generate(compile=True)`` with the static-shape body run eagerly: the compiled path's
    arithmetic (whole cache + window mask, tensor position, index_copy_) without the compiler."""
    real = D._DecodeStep.__init__

    def init(self, backbone, head, rows, compiled=False, pack=True):
        real(self, backbone, head, rows, False, pack)
        if compiled:
            self.fn = self._body

    monkeypatch.setattr(D._DecodeStep, "__init__", init)
    monkeypatch.setattr(D, "_COMPILED", D.weakref.WeakKeyDictionary())


@pytest.mark.parametrize("name", ["gpt2", "rotary-swiglu-rms", "sinusoidal-math", "bart"])
@pytest.mark.parametrize("settings", [dict(), dict(num_beams=3)], ids=["greedy", "beams"])
def test_static_shape_step_gives_the_eager_steps_logits(models, name, settings, static_eager):
    m = models[name]
    ids, mask = _prompts(m.config.is_encoder_decoder, m.config.pad_token_id)
    kw = dict(max_new_tokens=9, eos_token_id=[], return_dict_in_generate=True, output_scores=True, **settings)
    eager = m.generate(ids, mask, **kw)
    static = m.generate(ids, mask, compile=True, **kw)
    assert isinstance(D._COMPILED[m.backbone][1].fn, type(D._DecodeStep(m.backbone, m.heads["lm"], 1)._body))  # the static body ran
    assert torch.equal(eager.sequences, static.sequences)
    for a, b in zip(eager.scores, static.scores):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-5)


def test_compiled_step_caches_start_zeroed():
    """The compiled step reads whole cache rows (later columns masked by -1e9): an uninitialised
    key of 1e30 would outweigh the mask, so its caches must start at zero."""
    backbone = build_model("gpt-mini", n_layers=1, **SMALL).backbone
    cache = backbone.new_cache(2, 64, torch.float32, torch.device("cpu"), zeros=True)
    assert all(bool((t == 0).all()) for c in cache.layers for t in (c.k, c.v))


def test_compiled_step_is_kept_until_a_weight_changes(models, static_eager):
    m = build_model("gpt-mini", n_layers=1, **SMALL).eval()
    head = m.heads["lm"]
    first = D._compiled_step(m.backbone, head)
    assert D._compiled_step(m.backbone, head) is first
    with torch.no_grad():
        m.backbone.decoder.blocks[0].mlp.fc1.weight.add_(1.0)  # e.g. a training step
    assert D._compiled_step(m.backbone, head) is not first


def test_cli_generate_compile_flag(static_eager, tmp_path, capsys, monkeypatch):
    from transferlab.cli import main as cli
    from transferlab.tokenizer import Tokenizer

    tok = Tokenizer.train([f"the film number {i} was {'good' if i % 2 else 'bad'}." for i in range(100)],
                          kind="bpe", vocab_size=90, min_frequency=1)
    m = _perturb(build_model("gpt-mini", n_layers=1, **{**SMALL, "vocab_size": len(tok)}, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id), 3)
    m.save_pretrained(tmp_path)
    tok.save(tmp_path)
    real, built = D._compiled_step, []
    monkeypatch.setattr(D, "_compiled_step", lambda backbone, head: built.append(1) or real(backbone, head))
    assert cli(["generate", "--model", str(tmp_path), "--prompt", "the film", "--max-new-tokens", "9", "--compile"]) == 0
    streamed = capsys.readouterr().out
    assert built == [1]  # the flag reached generate
    out = m.generate(torch.tensor([tok.encode("the film")]), max_new_tokens=9, eos_token_id=tok.eos_token_id,
                     pad_token_id=tok.pad_token_id)
    assert streamed == tok.decode(out[0], skip_special_tokens=True) + "\n"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit deprecations raised inside inductor
def test_compiled_generation_equals_eager_for_two_models_of_one_shape():
    """The real thing: inductor with frozen weights. Two models of the same shape must each get
    their own weights (frozen constants are not shared through a compile cache)."""
    kw = dict(max_new_tokens=6, eos_token_id=[], return_dict_in_generate=True, output_scores=True)
    ids = torch.randint(3, V, (1, 5), generator=torch.Generator().manual_seed(5))
    for seed in (0, 1):
        torch.manual_seed(seed)
        m = _perturb(build_model("gpt-mini", n_layers=1, **SMALL), seed)
        eager = m.generate(ids, **kw)
        compiled = m.generate(ids, compile=True, **kw)
        assert torch.equal(eager.sequences, compiled.sequences)
        for a, b in zip(eager.scores, compiled.scores):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
