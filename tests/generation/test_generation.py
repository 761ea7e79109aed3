"""Generation: parity with transformers (greedy + beam search, left padding), KV cache vs none,
sampling filters and seeds, eos/stop strings/streaming, perplexity of generated text, bad input,
and the ``transferlab generate`` CLI."""

from __future__ import annotations

import io
import json
import math

import pytest
import torch

from transferlab.cli import main as cli
from transferlab.errors import CheckpointError, ConfigError
from transferlab.generation import (
    GenerationConfig, TextStreamer, generate, generation_perplexity, token_logprobs, top_k_filter, top_p_filter,
)
from transferlab.interop.hf import from_hf
from transferlab.models import build_model

T = pytest.importorskip("transformers")

V = 97
PAD_GPT, EOS_GPT = 2, 1
PAD_BART, EOS_BART = 1, 2


# ---------------------------------------------------------------------------------- fixtures
def _perturb(model: torch.nn.Module, seed: int, scale: float = 0.05) -> None:
    """Random init leaves biases at 0 and norms at 1; nudge everything so every tensor matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
        for name, b in model.named_buffers():
            if name.endswith("final_logits_bias"):
                b.add_(torch.randn(b.shape, generator=g) * 0.5)


@pytest.fixture(scope="module")
def gpt2_pair():
    torch.manual_seed(0)
    hc = T.GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=64, resid_pdrop=0.0,
                      embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=EOS_GPT, pad_token_id=PAD_GPT)
    hf = T.GPT2LMHeadModel(hc).eval()
    _perturb(hf, 0)
    return hf, from_hf(hf).eval()


@pytest.fixture(scope="module")
def bart_pair():
    torch.manual_seed(1)
    hc = T.BartConfig(vocab_size=V, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                      decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
                      dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, forced_eos_token_id=None)
    hf = T.BartForConditionalGeneration(hc).eval()
    _perturb(hf, 1)
    return hf, from_hf(hf).eval()


def _left_padded(lengths: list[int], T_: int, pad: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (len(lengths), T_), generator=g)
    mask = (torch.arange(T_)[None] >= T_ - torch.tensor(lengths)[:, None]).long()
    return ids.masked_fill(mask == 0, pad), mask


def _right_padded(lengths: list[int], T_: int, pad: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (len(lengths), T_), generator=g)
    mask = (torch.arange(T_)[None] < torch.tensor(lengths)[:, None]).long()
    return ids.masked_fill(mask == 0, pad), mask


def _mid_token(out: torch.Tensor, start: int, row: int = 0, step: int = 3) -> int:
    """A token the model emits mid-way: used as eos so some rows finish early and others do not."""
    return int(out[row, start + step])


# ---------------------------------------------------------------------------------- parity
GPT_SETTINGS = [
    dict(),  # greedy
    dict(repetition_penalty=1.3),
    dict(num_beams=3),
    dict(num_beams=3, length_penalty=0.5, early_stopping=True),
    dict(num_beams=4, length_penalty=2.0, early_stopping="never", num_return_sequences=2),
    dict(num_beams=2, repetition_penalty=1.5, min_new_tokens=4),
]


@pytest.mark.parametrize("kw", GPT_SETTINGS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "greedy")
def test_gpt2_generation_identical_to_transformers_with_left_padding(gpt2_pair, kw):
    hf, ours = gpt2_pair
    ids, mask = _left_padded([9, 4, 6], 9, PAD_GPT)
    common = dict(max_new_tokens=12, pad_token_id=PAD_GPT)
    # pick an eos the model actually produces mid-way, so finished rows get padded while others run on
    free = hf.generate(ids, attention_mask=mask, do_sample=False, eos_token_id=None, **common,
                       **{k: v for k, v in kw.items() if k != "min_new_tokens"})
    eos = _mid_token(free, 9)
    want = hf.generate(ids, attention_mask=mask, do_sample=False, eos_token_id=eos, **common, **kw)
    got = ours.generate(ids, attention_mask=mask, eos_token_id=eos, **common, **kw)
    assert got.shape == want.shape
    assert torch.equal(got, want)
    if kw.get("num_beams", 1) == 1:
        assert (got[:, 9:] == PAD_GPT).any(), "some row should have finished and been padded"
    # and without eos at all: full length, same ids
    got_free = ours.generate(ids, attention_mask=mask, eos_token_id=[], **common,
                             **{k: v for k, v in kw.items() if k != "min_new_tokens"})
    assert torch.equal(got_free, free)


BART_SETTINGS = [
    dict(),
    dict(num_beams=3),
    dict(num_beams=3, length_penalty=2.0, early_stopping=True),
    dict(num_beams=4, early_stopping="never", num_return_sequences=3),
    dict(num_beams=2, repetition_penalty=1.5),
    dict(num_beams=3, forced_bos_token_id=0, forced_eos_token_id=EOS_BART),
]


@pytest.mark.parametrize("kw", BART_SETTINGS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "greedy")
def test_bart_generation_identical_to_transformers_with_padding(bart_pair, kw):
    hf, ours = bart_pair
    src, smask = _right_padded([7, 3, 5], 7, PAD_BART, seed=1)
    common = dict(max_new_tokens=10, pad_token_id=PAD_BART, decoder_start_token_id=2)
    free = hf.generate(src, attention_mask=smask, do_sample=False, eos_token_id=None, **common,
                       **{k: v for k, v in kw.items() if not k.startswith("forced")})
    eos = _mid_token(free, 1, step=2)
    hf_kw = dict(forced_eos_token_id=None, **kw) if "forced_eos_token_id" not in kw else kw
    want = hf.generate(src, attention_mask=smask, do_sample=False, eos_token_id=eos, **common, **hf_kw)
    got = ours.generate(src, attention_mask=smask, eos_token_id=eos, **common, **kw)
    assert got.shape == want.shape
    assert torch.equal(got, want)
    assert (got[:, 0] == 2).all()  # decoder start token first


# ---------------------------------------------------------------------------------- cache and padding
def _variants():
    """Our own decoders/encoder-decoders with rotary, sinusoidal and T5 relative positions."""
    small = dict(vocab_size=V, d_model=32, n_heads=4, d_ff=64, dropout=0.0, attention_dropout=0.0)
    return {
        "rotary-swiglu": build_model("gpt-mini", n_layers=2, position="rotary", activation="swiglu",
                                     norm="rmsnorm", **small),
        "sinusoidal": build_model("gpt-mini", n_layers=2, position="sinusoidal", **small),
        "math-attention": build_model("gpt-mini", n_layers=2, attn_impl="math", **small),  # pretrain's CPU default
        "t5": build_model("t5-mini", n_layers=2, d_head=8, eos_token_id=1, **small),
        "bart": build_model("bart-mini", n_layers=1, eos_token_id=2, decoder_start_token_id=2, pad_token_id=1, **small),
    }


@pytest.fixture(scope="module")
def variants():
    torch.manual_seed(3)
    models = _variants()
    for i, m in enumerate(models.values()):
        _perturb(m, 10 + i)
        m.eval()
    return models


@pytest.mark.parametrize("name", ["rotary-swiglu", "sinusoidal", "math-attention", "t5", "bart"])
@pytest.mark.parametrize("beams", [1, 3])
def test_kv_cache_gives_the_same_tokens_as_recomputing(variants, name, beams):
    m = variants[name]
    seq2seq = m.config.is_encoder_decoder
    ids, mask = (_right_padded if seq2seq else _left_padded)([6, 3], 6, m.config.pad_token_id, seed=4)
    a = m.generate(ids, mask, max_new_tokens=10, num_beams=beams, eos_token_id=[])
    b = m.generate(ids, mask, max_new_tokens=10, num_beams=beams, eos_token_id=[], use_cache=False)
    assert a.shape[1] == (1 if seq2seq else 6) + 10
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["rotary-swiglu", "sinusoidal", "math-attention"])
def test_left_padding_does_not_change_a_prompts_continuation(variants, name):
    """Position ids = cumsum(mask) - 1: a prompt padded in a batch continues as it does alone."""
    m = variants[name]
    ids, mask = _left_padded([7, 3], 7, m.config.pad_token_id, seed=5)
    batched = m.generate(ids, mask, max_new_tokens=8, eos_token_id=[])
    alone = m.generate(ids[1:, 4:], max_new_tokens=8, eos_token_id=[])
    assert torch.equal(batched[1, 4:], alone[0])


def test_bfloat16_weights_generate_and_score_in_float32():
    m = build_model("gpt-mini", vocab_size=V, d_model=32, n_layers=1, n_heads=4, d_ff=64).to(torch.bfloat16)
    ids, mask = _left_padded([5, 3], 5, 0, seed=6)
    out = m.generate(ids, mask, max_new_tokens=6, eos_token_id=[], return_dict_in_generate=True, output_scores=True)
    assert out.sequences.shape == (2, 11) and out.scores[0].dtype == torch.float32
    assert token_logprobs(m, out.sequences).dtype == torch.float32


def test_right_padded_decoder_prompts_are_refused(gpt2_pair):
    ids, mask = _right_padded([5, 3], 5, PAD_GPT)
    with pytest.raises(ConfigError, match="left-padded.*padding_side = 'left'"):
        gpt2_pair[1].generate(ids, mask)


# ---------------------------------------------------------------------------------- sampling
def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]])
    logits = probs.log()
    kept = lambda p: torch.isfinite(top_p_filter(logits, p)).nonzero()[:, 1].tolist()  # noqa: E731
    assert kept(0.4) == [1]  # 0.5 alone reaches 0.4
    assert kept(0.75) == [1, 3]  # 0.5 + 0.3 = 0.8 >= 0.75
    assert kept(0.85) == [1, 2, 3]  # needs 0.15 too: 0.95
    assert kept(0.96) == [0, 1, 2, 3]
    assert kept(1.0) == [0, 1, 2, 3]
    assert kept(1e-6) == [1]  # always at least one token
    # kept scores are untouched
    out = top_p_filter(logits, 0.75)
    assert torch.equal(out[0, [1, 3]], logits[0, [1, 3]])


def test_top_k_keeps_k_highest():
    s = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]])
    assert torch.isfinite(top_k_filter(s, 2)).nonzero()[:, 1].tolist() == [1, 3]
    assert torch.equal(top_k_filter(s, 0), s)


def test_top_k_1_and_tiny_temperature_equal_greedy(gpt2_pair):
    ours = gpt2_pair[1]
    ids, mask = _left_padded([8, 5, 2], 8, PAD_GPT, seed=7)
    greedy = ours.generate(ids, mask, max_new_tokens=15, eos_token_id=[])
    assert torch.equal(ours.generate(ids, mask, max_new_tokens=15, eos_token_id=[], do_sample=True, top_k=1, seed=3),
                       greedy)
    assert torch.equal(ours.generate(ids, mask, max_new_tokens=15, eos_token_id=[], do_sample=True, temperature=1e-4,
                                     top_k=0, seed=3), greedy)


def test_same_seed_same_sample_different_seed_different(gpt2_pair):
    ours = gpt2_pair[1]
    ids, mask = _left_padded([8, 5], 8, PAD_GPT, seed=8)
    kw = dict(max_new_tokens=20, eos_token_id=[], do_sample=True, top_k=0, temperature=1.5)
    a = ours.generate(ids, mask, seed=11, **kw)
    b = ours.generate(ids, mask, seed=11, **kw)
    c = ours.generate(ids, mask, seed=12, **kw)
    g = torch.Generator().manual_seed(11)
    d = ours.generate(ids, mask, generator=g, **kw)
    assert torch.equal(a, b) and torch.equal(a, d)
    assert not torch.equal(a, c)
    # samples differ from greedy and stay inside the vocabulary
    assert not torch.equal(a, ours.generate(ids, mask, max_new_tokens=20, eos_token_id=[]))
    assert int(a.max()) < V


def test_sampling_follows_the_filtered_distribution():
    """One step of top-k + temperature sampling draws tokens with the filtered softmax's frequencies."""
    torch.manual_seed(0)
    m = build_model("gpt-mini", vocab_size=8, d_model=16, n_layers=1, n_heads=2, d_ff=32, dropout=0.0,
                    attention_dropout=0.0, max_positions=16).eval()
    _perturb(m, 5, scale=0.5)
    ids = torch.tensor([[3, 4]])
    with torch.no_grad():
        logits = m(input_ids=ids).logits[0, -1]
    expected = top_k_filter((logits / 0.7)[None], 3)[0].softmax(-1)
    out = m.generate(ids.repeat(4000, 1), max_new_tokens=1, do_sample=True, temperature=0.7, top_k=3, seed=0,
                     eos_token_id=[])
    freq = torch.bincount(out[:, -1], minlength=8).float() / 4000
    assert (freq[expected == 0] == 0).all()
    assert torch.allclose(freq, expected, atol=0.03)


def test_num_return_sequences_with_sampling(gpt2_pair):
    ours = gpt2_pair[1]
    ids, mask = _left_padded([4, 6], 6, PAD_GPT, seed=9)
    out = ours.generate(ids, mask, max_new_tokens=5, do_sample=True, num_return_sequences=3, seed=0, eos_token_id=[])
    assert out.shape == (6, 11)
    assert torch.equal(out[:3, :6], ids[:1].expand(3, 6)) and torch.equal(out[3:, :6], ids[1:].expand(3, 6))


# ---------------------------------------------------------------------------------- eos, stops, streaming
def test_finished_rows_are_padded_and_the_loop_stops_when_all_finish(gpt2_pair):
    ours = gpt2_pair[1]
    ids, mask = _left_padded([5, 5], 5, PAD_GPT, seed=2)
    free = ours.generate(ids, mask, max_new_tokens=12, eos_token_id=[])
    eos = int(free[0, 5 + 1])  # row 0 emits it at its 2nd new token
    both = [eos] + ([int(free[1, 5 + 3])] if int(free[1, 5 + 3]) != eos else [])
    out = ours.generate(ids, mask, max_new_tokens=12, eos_token_id=both)
    first_end = [int(((out[r, 5:][:, None] == torch.tensor(both)).any(1)).nonzero()[0]) for r in range(2)]
    for r, e in enumerate(first_end):
        assert (out[r, 5 + e + 1:] == PAD_GPT).all()
    assert out.shape[1] == 5 + max(first_end) + 1 < 5 + 12  # stopped early


def test_min_new_tokens_suppresses_eos(gpt2_pair):
    ours = gpt2_pair[1]
    ids = torch.tensor([[5, 6, 7]])
    free = ours.generate(ids, max_new_tokens=10, eos_token_id=[])
    eos = int(free[0, 3])  # would end at once
    assert ours.generate(ids, max_new_tokens=10, eos_token_id=eos).shape[1] == 4
    out = ours.generate(ids, max_new_tokens=10, eos_token_id=eos, min_new_tokens=5)
    assert not (out[0, 3:8] == eos).any()


class _CharTok:
    """Each id decodes to one letter: enough for stop strings and streaming."""

    def decode(self, ids, skip_special_tokens=False):
        ids = ids.tolist() if hasattr(ids, "tolist") else ids
        return "".join(chr(ord("a") + int(i) % 26) for i in ids)


def test_stop_strings_end_a_sequence(gpt2_pair):
    ours, tok = gpt2_pair[1], _CharTok()
    ids, mask = _left_padded([5, 5], 5, PAD_GPT, seed=12)
    free = ours.generate(ids, mask, max_new_tokens=12, eos_token_id=[])
    stop = tok.decode(free[0, 5 + 2: 5 + 4])  # the text of row 0's 3rd and 4th new tokens
    # where row 0's text first contains it (at the 4th new token or earlier)
    end = next(i for i in range(1, 13) if stop in tok.decode(free[0, 5:5 + i]))
    assert end <= 4
    out = ours.generate(ids, mask, max_new_tokens=12, eos_token_id=[], stop_strings=stop, tokenizer=tok)
    assert torch.equal(out[0, :5 + end], free[0, :5 + end])  # same text up to the stop string, included
    assert (out[0, 5 + end:] == PAD_GPT).all()  # then padding
    # row 1 runs on as before until it meets the stop string itself (or the end)
    end1 = next((i for i in range(1, 13) if stop in tok.decode(free[1, 5:5 + i])), 12)
    assert torch.equal(out[1, :5 + end1], free[1, :5 + end1])
    with pytest.raises(ConfigError, match="stop_strings need tokenizer"):
        ours.generate(ids, mask, stop_strings=["x"])


def test_streamer_callable_and_text_streamer(gpt2_pair):
    ours, tok = gpt2_pair[1], _CharTok()
    ids = torch.tensor([[5, 6, 7, 8]])
    seen: list[int] = []
    out = ours.generate(ids, max_new_tokens=9, eos_token_id=[], streamer=lambda t: seen.append(int(t[0])))
    assert seen == out[0, 4:].tolist()
    buf = io.StringIO()
    ours.generate(ids, max_new_tokens=9, eos_token_id=[], streamer=TextStreamer(tok, skip_prompt=True, file=buf))
    assert buf.getvalue() == tok.decode(out[0, 4:]) + "\n"
    buf = io.StringIO()
    ours.generate(ids, max_new_tokens=9, eos_token_id=[], streamer=TextStreamer(tok, skip_prompt=False, file=buf))
    assert buf.getvalue() == tok.decode(out[0]) + "\n"
    with pytest.raises(ConfigError, match="not supported with beam search"):
        ours.generate(ids, num_beams=2, streamer=lambda t: None)


def test_return_dict_has_scores_and_beam_scores(gpt2_pair):
    hf, ours = gpt2_pair
    ids = torch.tensor([[5, 6, 7, 8]])
    out = ours.generate(ids, max_new_tokens=6, eos_token_id=[], return_dict_in_generate=True, output_scores=True)
    assert len(out.scores) == 6 and out.scores[0].shape == (1, V)
    assert torch.equal(torch.stack(out.scores).argmax(-1)[:, 0], out.sequences[0, 4:])
    b = ours.generate(ids, max_new_tokens=6, eos_token_id=[], num_beams=3, num_return_sequences=2,
                      return_dict_in_generate=True)
    want = hf.generate(ids, max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=PAD_GPT, num_beams=3,
                       num_return_sequences=2, return_dict_in_generate=True, output_scores=True)
    assert torch.equal(b.sequences, want.sequences)
    assert torch.allclose(b.sequences_scores, want.sequences_scores, atol=1e-5)


# ---------------------------------------------------------------------------------- perplexity
def test_token_logprobs_match_the_forward_pass(gpt2_pair):
    ours = gpt2_pair[1]
    ids, mask = _left_padded([7, 4], 7, PAD_GPT, seed=13)
    lp = token_logprobs(ours, ids, mask)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ref = ours(input_ids=ids, attention_mask=mask, position_ids=pos).logits.log_softmax(-1)
    for r in range(2):
        for t in range(1, 7):
            # scored when the token and its predecessor are real (row 1's first token has no context)
            want = float(ref[r, t - 1, ids[r, t]]) if mask[r, t - 1] else 0.0
            assert (lp[r, t] == 0) == (not mask[r, t - 1])
            assert lp[r, t] == pytest.approx(want, abs=1e-5)


def test_generation_perplexity_is_exp_mean_nll_of_new_tokens(gpt2_pair, bart_pair):
    ours = gpt2_pair[1]
    ids, mask = _left_padded([6, 3], 6, PAD_GPT, seed=14)
    out = ours.generate(ids, mask, max_new_tokens=8, do_sample=True, seed=0, eos_token_id=[])
    ppl = generation_perplexity(ours, ids, out, mask, eos_token_id=[])
    full_mask = torch.cat([mask, torch.ones(2, 8, dtype=torch.long)], 1)
    lp = token_logprobs(ours, out, full_mask)
    assert torch.allclose(ppl, torch.exp(-lp[:, 6:].mean(1)), rtol=1e-5)
    assert (ppl > 1).all()
    # encoder-decoders: scored given the source; eos counts, padding after it does not
    b = bart_pair[1]
    src, smask = _right_padded([5, 3], 5, PAD_BART, seed=15)
    out = b.generate(src, smask, max_new_tokens=6, eos_token_id=[])
    eos = int(out[0, 3])
    first = int((out[0, 1:] == eos).nonzero()[0]) + 1  # column of its first occurrence
    cut = b.generate(src, smask, max_new_tokens=6, eos_token_id=eos)
    p_cut = generation_perplexity(b, src, cut, smask, eos_token_id=eos)
    lp = token_logprobs(b, src, smask, decoder_input_ids=out)
    assert p_cut[0] == pytest.approx(math.exp(-float(lp[0, 1:first + 1].mean())), rel=1e-5)


# ---------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kw, msg", [
    (dict(top_p=0.0), r"top_p must be in \(0, 1\], got 0.0"),
    (dict(top_p=1.5), r"top_p must be in \(0, 1\], got 1.5"),
    (dict(do_sample=True, temperature=0.0), "temperature must be > 0 when sampling"),
    (dict(do_sample=True, temperature=-1.0), "temperature must be > 0 when sampling"),
    (dict(num_beams=0), "num_beams must be an integer >= 1"),
    (dict(num_beams=2, num_return_sequences=3), "num_return_sequences=3 is more than num_beams=2"),
    (dict(num_return_sequences=2), "needs do_sample=True or num_beams > 1"),
    (dict(max_new_tokens=-1), "max_new_tokens must be an integer >= 0"),
    (dict(repetition_penalty=0.0), "repetition_penalty must be > 0"),
    (dict(early_stopping="sometimes"), "early_stopping must be True, False or 'never'"),
    (dict(max_tokens=5), "unknown argument.*max_tokens.*known:.*max_new_tokens"),
    (dict(pad_token_id=V + 5), f"pad_token_id {V + 5} is outside the vocabulary"),
    (dict(max_length=2), "max_length=2 leaves no room after a prompt of 2 tokens"),
    (dict(max_length=0), "max_length must be an integer >= 1"),
    (dict(no_repeat_ngram_size=-1), "no_repeat_ngram_size must be an integer >= 0"),
    (dict(bad_words_ids=[5]), "bad_words_ids must be a non-empty list of non-empty lists"),
    (dict(bad_words_ids=[[]]), "bad_words_ids must be a non-empty list of non-empty lists"),
    (dict(bad_words_ids=[[V]]), f"bad_words_ids has id\\(s\\) \\[{V}\\] outside the vocabulary"),
])
def test_bad_settings_raise_config_error(gpt2_pair, kw, msg):
    with pytest.raises(ConfigError, match=msg):
        gpt2_pair[1].generate(torch.tensor([[5, 6]]), **kw)


def test_temperature_is_free_when_not_sampling(gpt2_pair):
    ours = gpt2_pair[1]
    ids = torch.tensor([[5, 6]])
    assert torch.equal(ours.generate(ids, temperature=0.0, max_new_tokens=3), ours.generate(ids, max_new_tokens=3))


def test_prompt_longer_than_the_context_raises_or_is_left_truncated(gpt2_pair):
    ours = gpt2_pair[1]  # max_positions = 64
    ids = torch.randint(3, V, (1, 60), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ConfigError, match="prompt of 60 tokens \\+ max_new_tokens=10 exceeds .*max_positions=64.*truncation=True"):
        ours.generate(ids, max_new_tokens=10)
    out = ours.generate(ids, max_new_tokens=10, truncation=True, eos_token_id=[])
    assert torch.equal(out, ours.generate(ids[:, 6:], max_new_tokens=10, eos_token_id=[]))
    with pytest.raises(ConfigError, match="encoder input of 70 tokens is longer than max_positions=64"):
        build_model("bart-mini", vocab_size=V, d_model=32, n_layers=1, n_heads=4, d_ff=64,
                    max_positions=64).generate(torch.zeros(1, 70, dtype=torch.long))


def test_models_that_cannot_generate_say_why():
    enc = build_model("bert-tiny", vocab_size=V, d_model=32, n_layers=1, n_heads=4, d_ff=64)
    with pytest.raises(ConfigError, match="needs a decoder or encoder-decoder.*encoder"):
        enc.generate(torch.tensor([[5, 6]]))
    clf = build_model("gpt-mini", vocab_size=V, d_model=32, n_layers=1, n_heads=4, d_ff=64,
                      heads={"classification": {"num_labels": 2}})
    with pytest.raises(ConfigError, match="need an 'lm' head; this model has heads: classification"):
        clf.generate(torch.tensor([[5, 6]]))


@pytest.mark.parametrize("ids, mask, msg", [
    (torch.tensor([5, 6]), None, "must be a \\(batch, length\\) integer tensor"),
    (torch.tensor([[5.0, 6.0]]), None, "integer tensor"),
    (torch.tensor([[5, V]]), None, f"must be in \\[0, {V}\\)"),
    (torch.zeros(1, 0, dtype=torch.long), None, "empty prompt"),
    (torch.tensor([[5, 6]]), torch.ones(1, 3), "attention_mask must have the shape"),
    (torch.tensor([[5, 6]]), torch.zeros(1, 2), "all zeros"),
])
def test_bad_inputs_raise_config_error(gpt2_pair, ids, mask, msg):
    with pytest.raises(ConfigError, match=msg):
        gpt2_pair[1].generate(ids, mask)


def test_generate_restores_training_mode(gpt2_pair):
    ours = gpt2_pair[1]
    ours.train()
    try:
        ours.generate(torch.tensor([[5, 6]]), max_new_tokens=2)
        assert ours.training
    finally:
        ours.eval()


def test_generation_config_object_and_overrides(gpt2_pair):
    ours = gpt2_pair[1]
    ids = torch.tensor([[5, 6, 7]])
    gc = GenerationConfig(max_new_tokens=4, num_beams=2)
    assert torch.equal(generate(ours, ids, generation_config=gc), ours.generate(ids, max_new_tokens=4, num_beams=2))
    assert generate(ours, ids, generation_config=gc, max_new_tokens=2).shape[1] <= 5
    assert gc.max_new_tokens == 4  # the caller's object is not modified


# ---------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from transferlab.tokenizer import Tokenizer

    lines = [f"the film number {i} was {'good' if i % 2 else 'bad'} and the cast was {'great' if i % 3 else 'weak'}."
             for i in range(200)]
    tok = Tokenizer.train(lines, kind="bpe", vocab_size=150, min_frequency=1)
    torch.manual_seed(0)
    m = build_model("gpt-mini", vocab_size=len(tok), d_model=32, n_layers=2, n_heads=4, d_ff=64, max_positions=64,
                    pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    _perturb(m, 0, scale=0.3)
    d = tmp_path_factory.mktemp("gen") / "model"
    m.save_pretrained(d)
    tok.save(d)
    return d, m.eval(), tok


def test_generate_from_a_tokenizer_batch_and_batch_decode(model_dir):
    d, m, tok = model_dir
    tok.padding_side = "left"
    prompts = ["the film number 3 was", "the cast"]
    batch = tok(prompts, padding=True, return_tensors="pt", return_token_type_ids=True)
    out = m.generate(**batch, max_new_tokens=6, eos_token_id=[])
    texts = tok.batch_decode(out, skip_special_tokens=True)
    for p, text, row in zip(prompts, texts, out):
        alone = m.generate(torch.tensor([tok.encode(p)]), max_new_tokens=6, eos_token_id=[])
        assert text == tok.decode(alone[0], skip_special_tokens=True)
        assert text.startswith(p)
    tok.padding_side = "right"


def test_cli_generate_streams_one_prompt_as_the_library_generates(model_dir, capsys):
    d, m, tok = model_dir
    assert cli(["generate", "--model", str(d), "--prompt", "the film", "--max-new-tokens", "12"]) == 0
    streamed = capsys.readouterr().out
    ids = torch.tensor([tok.encode("the film")])
    out = m.generate(ids, max_new_tokens=12, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    assert streamed == tok.decode(out[0], skip_special_tokens=True) + "\n"


def test_cli_generate_batch_json_with_perplexity_and_sampling_seed(model_dir, capsys, tmp_path):
    d, m, tok = model_dir
    f = tmp_path / "prompts.txt"
    f.write_text("the film\n\nthe cast was great and\n", encoding="utf-8")
    args = ["generate", "--model", str(d), "--prompt-file", str(f), "--max-new-tokens", "8", "--do-sample",
            "--seed", "3", "--top-p", "0.9", "--perplexity", "--json"]
    assert cli(args) == 0
    recs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["prompt"] for r in recs] == ["the film", "the cast was great and"]
    assert all(r["perplexity"] > 1 for r in recs)
    assert cli(args) == 0
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == recs  # same seed, same text
    # batched (left-padded) greedy completions equal one-at-a-time ones
    assert cli(["generate", "--model", str(d), "--prompt-file", str(f), "--max-new-tokens", "8", "--json"]) == 0
    batched = [json.loads(line)["completion"] for line in capsys.readouterr().out.splitlines()]
    for p, c in zip(["the film", "the cast was great and"], batched):
        assert cli(["generate", "--model", str(d), "--prompt", p, "--max-new-tokens", "8", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["completion"] == c


def test_cli_generate_with_an_encoder_decoder_and_beams(model_dir, tmp_path, capsys):
    _, _, tok = model_dir
    torch.manual_seed(0)
    m = build_model("bart-mini", vocab_size=len(tok), d_model=32, n_layers=1, n_heads=4, d_ff=64, max_positions=64,
                    pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                    decoder_start_token_id=tok.eos_token_id)
    _perturb(m, 1, scale=0.3)
    d = tmp_path / "bart"
    m.save_pretrained(d)
    tok.save(d)
    assert cli(["generate", "--model", str(d), "--prompt", "the film was good", "--prompt", "the cast",
                "--num-beams", "3", "--max-new-tokens", "6", "--json"]) == 0
    recs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    tok.padding_side = "right"
    enc = tok(["the film was good", "the cast"], padding=True, return_tensors="pt")
    out = m.eval().generate(**enc, num_beams=3, max_new_tokens=6, eos_token_id=tok.eos_token_id,
                            pad_token_id=tok.pad_token_id)
    for r, row in zip(recs, out):
        new = [t for t in row[1:].tolist() if t != tok.pad_token_id]
        new = new[: new.index(tok.eos_token_id)] if tok.eos_token_id in new else new
        assert r["completion"] == tok.decode(new, skip_special_tokens=True)


def test_cli_generate_errors_are_one_line(model_dir, capsys, tmp_path):
    d = model_dir[0]
    cases = [
        (["--prompt", "x", "--top-p", "1.5"], "top_p must be in (0, 1]"),
        (["--prompt", "x", "--do-sample", "--temperature", "0"], "temperature must be > 0"),
        (["--prompt", "x", "--max-new-tokens", "500"], "exceeds the model's max_positions=64"),
        ([], "give at least one --prompt"),
        (["--prompt-file", str(tmp_path / "nope.txt")], "nope.txt: cannot read prompt file"),
    ]
    for extra, msg in cases:
        assert cli(["generate", "--model", str(d), *extra]) == 2
        err = capsys.readouterr()
        assert err.err.startswith("error: ") and msg in err.err and err.err.count("\n") == 1
        assert err.out == ""
    assert cli(["generate", "--model", str(tmp_path / "missing"), "--prompt", "x"]) == 2
    assert "no such model directory" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- transformers' arguments
# max_length / min_length / no_repeat_ngram_size / bad_words_ids / GenerationConfig, each checked
# against transformers' own generate on the same weights (identical ids).
def _hf_gen(hf, *args, **kw):
    return hf.generate(*args, do_sample=False, **kw)


GPT_HF_ARGS = [
    dict(max_length=14),  # counts the 9-column prompt: 5 new tokens
    dict(max_length=14, num_beams=3),
    dict(no_repeat_ngram_size=2, max_new_tokens=14),
    dict(no_repeat_ngram_size=3, num_beams=3, max_new_tokens=12),
    dict(min_length=16, max_new_tokens=12),
    dict(max_length=30, max_new_tokens=6),  # max_new_tokens wins, as in transformers
]


@pytest.mark.parametrize("kw", GPT_HF_ARGS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_gpt2_transformers_arguments_give_transformers_ids(gpt2_pair, kw):
    hf, ours = gpt2_pair
    ids, mask = _left_padded([9, 4, 6], 9, PAD_GPT)
    free = _hf_gen(hf, ids, attention_mask=mask, eos_token_id=None, pad_token_id=PAD_GPT, max_new_tokens=12)
    eos = _mid_token(free, 9)  # an eos the model emits, so min_length has something to hold back
    want = _hf_gen(hf, ids, attention_mask=mask, eos_token_id=eos, pad_token_id=PAD_GPT, **kw)
    got = ours.generate(ids, attention_mask=mask, eos_token_id=eos, pad_token_id=PAD_GPT, **kw)
    assert torch.equal(got, want)
    if "max_length" in kw and "max_new_tokens" not in kw:
        assert got.shape[1] <= kw["max_length"]


def test_no_repeat_ngram_size_and_bad_words_change_the_output_as_transformers_does(gpt2_pair):
    hf, ours = gpt2_pair
    ids = torch.tensor([[5, 6, 7, 8]])
    free = ours.generate(ids, max_new_tokens=24, eos_token_id=[])
    toks = free[0, 4:].tolist()
    # greedy decoding of a tiny random model loops: some bigram repeats, so the processor must act
    bigrams = list(zip(toks, toks[1:]))
    assert len(set(bigrams)) < len(bigrams)
    for n in (1, 2, 3):
        got = ours.generate(ids, max_new_tokens=24, eos_token_id=[], no_repeat_ngram_size=n)
        assert torch.equal(got, _hf_gen(hf, ids, max_new_tokens=24, eos_token_id=None, no_repeat_ngram_size=n))
        grams = [tuple(got[0, i:i + n].tolist()) for i in range(got.shape[1] - n + 1)]
        assert len(set(grams)) == len(grams), f"an {n}-gram repeats"
    # bad words: one token everywhere, and a two-token sequence the free run produced
    first, (a, b) = toks[0], bigrams[1]
    banned_run = ours.generate(ids, max_new_tokens=24, eos_token_id=[], bad_words_ids=[[first], [a, b]])[0, 4:].tolist()
    eos = next(t for t in banned_run[3:] if t not in (first, a, b))  # a token that run emits: it ends there
    bad = [[first], [a, b], [eos]]  # [eos] alone is dropped (eos stays possible), as in transformers
    for beams in (1, 3):
        got = ours.generate(ids, max_new_tokens=24, eos_token_id=eos, pad_token_id=PAD_GPT, bad_words_ids=bad,
                            num_beams=beams)
        want = _hf_gen(hf, ids, max_new_tokens=24, eos_token_id=eos, pad_token_id=PAD_GPT, bad_words_ids=bad,
                       num_beams=beams)
        assert torch.equal(got, want)
        new = got[0, 4:].tolist()
        assert first not in new and (a, b) not in set(zip(new, new[1:]))
        if beams == 1:
            assert new[-1] == eos and len(new) < 24  # stopped on the eos named in bad_words_ids


def test_repetition_penalty_ignores_the_padding_of_left_padded_prompts(gpt2_pair):
    hf, ours = gpt2_pair
    ids, mask = _left_padded([3, 8], 8, PAD_GPT, seed=3)
    free = ours.generate(ids, attention_mask=mask, max_new_tokens=6, eos_token_id=[])
    pad = int(free[0, 8])  # pad the short prompt with the very token it continues with
    ids = ids.masked_fill(mask == 0, pad)
    kw = dict(max_new_tokens=6, eos_token_id=None, pad_token_id=pad, repetition_penalty=5.0)
    want = _hf_gen(hf, ids, attention_mask=mask, **kw)
    assert torch.equal(ours.generate(ids, attention_mask=mask, **kw), want)


BART_HF_ARGS = [
    dict(max_length=7),  # counts the decoder start token, not the encoder input: 6 new tokens
    dict(max_length=9, num_beams=3),
    dict(no_repeat_ngram_size=2, max_new_tokens=10, num_beams=2),
    dict(min_length=6, max_length=10),
]


@pytest.mark.parametrize("kw", BART_HF_ARGS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_bart_transformers_arguments_give_transformers_ids(bart_pair, kw):
    hf, ours = bart_pair
    src, smask = _right_padded([7, 3, 5], 7, PAD_BART, seed=1)
    common = dict(pad_token_id=PAD_BART, decoder_start_token_id=2)
    free = _hf_gen(hf, src, attention_mask=smask, eos_token_id=None, max_new_tokens=10, **common)
    eos = _mid_token(free, 1, step=2)
    want = _hf_gen(hf, src, attention_mask=smask, eos_token_id=eos, forced_eos_token_id=None, **common, **kw)
    got = ours.generate(src, attention_mask=smask, eos_token_id=eos, **common, **kw)
    assert torch.equal(got, want)
    if "max_length" in kw:
        assert got.shape[1] <= kw["max_length"]


def test_a_transformers_generation_config_and_kwargs_over_it(gpt2_pair, bart_pair):
    hf, ours = gpt2_pair
    ids, mask = _left_padded([6, 4], 6, PAD_GPT, seed=2)
    hgc = T.GenerationConfig(max_length=16, num_beams=3, no_repeat_ngram_size=2, eos_token_id=None,
                             pad_token_id=PAD_GPT, length_penalty=0.7)
    want = hf.generate(ids, attention_mask=mask, generation_config=hgc)
    assert torch.equal(ours.generate(ids, attention_mask=mask, generation_config=hgc), want)
    assert torch.equal(generate(ours, ids, mask, generation_config=hgc), want)
    # keyword arguments override the config's fields, in both libraries
    want = hf.generate(ids, attention_mask=mask, generation_config=hgc, num_beams=1, max_new_tokens=5)
    assert torch.equal(ours.generate(ids, attention_mask=mask, generation_config=hgc, num_beams=1, max_new_tokens=5), want)
    hf_b, ours_b = bart_pair
    src, smask = _right_padded([7, 3], 7, PAD_BART, seed=4)
    bgc = T.GenerationConfig(max_length=8, num_beams=2, decoder_start_token_id=2, eos_token_id=EOS_BART,
                             pad_token_id=PAD_BART, forced_bos_token_id=0)
    assert torch.equal(ours_b.generate(src, attention_mask=smask, generation_config=bgc),
                       hf_b.generate(src, attention_mask=smask, generation_config=bgc))
    # a setting we cannot honour is refused by name, never silently ignored
    with pytest.raises(ConfigError, match="not supported by transferlab's generate: .*diversity_penalty=0.5"):
        ours.generate(ids, generation_config=T.GenerationConfig(num_beams=4, num_beam_groups=2, diversity_penalty=0.5))
    assert GenerationConfig.from_hf(T.GenerationConfig(typical_p=1.0, output_attentions=True)) == GenerationConfig()


def test_a_saved_generation_config_json_sets_the_defaults(gpt2_pair, tmp_path, capsys):
    hf, _ = gpt2_pair
    hf.generation_config = T.GenerationConfig(max_new_tokens=9, num_beams=2, no_repeat_ngram_size=2,
                                              eos_token_id=EOS_GPT, pad_token_id=PAD_GPT, bos_token_id=0)
    try:
        hf.save_pretrained(tmp_path / "hf")
        ids = torch.tensor([[5, 6, 7, 8, 9]])
        want, want_greedy = hf.generate(ids), hf.generate(ids, num_beams=1)
        want4 = hf.generate(ids, generation_config=T.GenerationConfig(max_new_tokens=4))  # merged over the saved one
        assert want.shape[1] == 5 + 9 and want4.shape[1] == 5 + 4
    finally:
        hf.generation_config = T.GenerationConfig.from_model_config(hf.config)
    from transferlab.models import from_pretrained

    m = from_pretrained(tmp_path / "hf")
    assert m.generation_config.num_beams == 2 and m.generation_config.no_repeat_ngram_size == 2
    assert torch.equal(m.generate(ids), want) and torch.equal(m.generate(ids, num_beams=1), want_greedy)
    # the converted folder keeps it, and so does our save_pretrained
    assert cli(["convert", "--from-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "ours")]) == 0
    capsys.readouterr()
    assert json.loads((tmp_path / "ours" / "generation_config.json").read_text())["num_beams"] == 2
    assert torch.equal(from_pretrained(tmp_path / "ours").generate(ids), want)
    # our own GenerationConfig layered over the saved one: only its changed fields win
    got = from_pretrained(tmp_path / "ours").generate(ids, generation_config=GenerationConfig(max_new_tokens=4))
    assert torch.equal(got, want4)
    # and exporting hands it back to transformers
    from transferlab.interop.hf import export_hf

    export_hf(from_pretrained(tmp_path / "ours"), tmp_path / "back")
    back = T.AutoModelForCausalLM.from_pretrained(tmp_path / "back").eval()
    assert back.generation_config.num_beams == 2 and torch.equal(back.generate(ids), want)
    # settings we cannot honour in a saved file: dropped with a warning, the model still loads
    (tmp_path / "ours" / "generation_config.json").write_text(json.dumps(
        {"num_beams": 4, "num_beam_groups": 2, "diversity_penalty": 0.5, "transformers_version": "5.25.0"}))
    with pytest.warns(UserWarning, match="diversity_penalty=0.5, num_beam_groups=2.*ignored"):
        assert from_pretrained(tmp_path / "ours").generation_config == GenerationConfig(num_beams=4)
    (tmp_path / "ours" / "generation_config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="generation_config.json: expected a JSON object"):
        from_pretrained(tmp_path / "ours")


# ---------------------------------------------------------------------------------- special ids outside the vocab
@pytest.fixture(scope="module")
def gpt2_173():
    """transformers' default GPT-2 config at a tiny vocabulary: bos/eos stay 50256, which no
    logit of a 173-token model can produce."""
    torch.manual_seed(5)
    hc = T.GPT2Config(vocab_size=173, n_embd=32, n_layer=2, n_head=4, n_positions=64, resid_pdrop=0.0,
                      embd_pdrop=0.0, attn_pdrop=0.0)
    hf = T.GPT2LMHeadModel(hc).eval()
    _perturb(hf, 5)
    return hf


@pytest.mark.parametrize("kw", [dict(), dict(num_beams=3), dict(max_length=15), dict(no_repeat_ngram_size=2)],
                         ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "greedy")
def test_eos_outside_the_vocabulary_runs_to_the_length_limit_as_transformers(gpt2_173, kw):
    assert gpt2_173.config.eos_token_id == 50256
    ours = from_hf(gpt2_173)
    ids, mask = _left_padded([5, 3], 5, 0, seed=6)
    kw = dict(max_new_tokens=12, **kw) if "max_length" not in kw else kw
    want = _hf_gen(gpt2_173, ids, attention_mask=mask, **kw)
    got = ours.generate(ids, attention_mask=mask, **kw)
    assert torch.equal(got, want)
    assert got.shape[1] == (15 if "max_length" in kw else 5 + 12)  # never stopped early


def test_converting_a_config_with_special_ids_outside_the_vocabulary_warns(gpt2_173, tmp_path, capsys, caplog):
    gpt2_173.save_pretrained(tmp_path / "hf")
    with caplog.at_level("WARNING", logger="transferlab.hf"):
        assert cli(["convert", "--from-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "ours")]) == 0
    assert "eos_token_id=50256" in caplog.text and "outside the vocabulary (vocab_size=173)" in caplog.text
    from transferlab.models import from_pretrained

    m = from_pretrained(tmp_path / "ours")
    assert m.config.eos_token_id == 50256  # kept: the round trip to transformers stays exact
    ids = torch.tensor([[7, 8, 9]])
    assert torch.equal(m.generate(ids, max_new_tokens=10), _hf_gen(gpt2_173, ids, max_new_tokens=10))
    from transferlab.interop.hf import export_hf

    export_hf(m, tmp_path / "back")  # and back to transformers unchanged
    back = T.AutoModelForCausalLM.from_pretrained(tmp_path / "back").eval()
    assert back.config.eos_token_id == 50256 and torch.equal(_hf_gen(back, ids, max_new_tokens=10),
                                                             _hf_gen(gpt2_173, ids, max_new_tokens=10))
    # a pad id that cannot be fed back is refused once sequences can finish
    with pytest.raises(ConfigError, match="pad_token_id 50256 is outside the vocabulary"):
        m.generate(ids, eos_token_id=5)


@pytest.mark.parametrize("content, msg", [
    ('{"top_p": "0.9"}', "wrong type"),
    ('{"num_beams": 0}', "num_beams must be an integer >= 1"),
    ('{"bad_words_ids": [3]}', "bad_words_ids must be a non-empty list of non-empty lists"),
    ('{"num_beams": 2', "invalid JSON"),
])
def test_a_broken_generation_config_json_is_a_one_line_error(tmp_path, content, msg):
    from transferlab.models import from_pretrained

    build_model("gpt-mini", vocab_size=V, d_model=32, n_layers=1, n_heads=4, d_ff=64, max_positions=32).save_pretrained(tmp_path)
    (tmp_path / "generation_config.json").write_text(content)
    with pytest.raises(CheckpointError, match=f"generation_config.json.*{msg}") as e:
        from_pretrained(tmp_path)
    assert "\n" not in str(e.value)
