"""Generation asks the backbone: a family that is not a transformer (a 1-layer GRU language model,
registered here) generates through ``Backbone.decode`` with its own decode state, since it has no
fast decode step: greedy equals a hand-written loop, beam search follows the state's ``reorder``,
sampling is seeded, and scoring works."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
import torch.nn as nn

from transferlab.errors import ConfigError
from transferlab.generation import generate, generation_perplexity, token_logprobs
from transferlab.models.backbone import Backbone, register_family
from transferlab.models.families import BackboneOutput

V, C = 53, 24
EOS, PAD = 1, 0


@dataclass
class ToyConfig:
    """The model-config fields generation reads (ids, vocabulary, heads)."""

    vocab_size: int = V
    d_model: int = C
    family: str = "gru-lm"
    eos_token_id: int = EOS
    pad_token_id: int = PAD
    bos_token_id: int = 2
    decoder_start_token_id: int = -1
    heads: dict[str, dict[str, Any]] = field(default_factory=lambda: {"lm": {}})


class GRUState:
    """The decode state: the GRU's hidden state (1, B, C) and how many tokens it has consumed."""

    def __init__(self, h: torch.Tensor) -> None:
        self.h, self.length = h, 0

    @property
    def seq_len(self) -> int:
        return self.length

    def reorder(self, index: torch.Tensor) -> None:
        self.h = self.h.index_select(1, index)


class GRULM(Backbone):
    """One GRU layer over token embeddings; padding is not supported (prompts here are unpadded)."""

    can_generate = True

    def __init__(self, cfg: ToyConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.gru = nn.GRU(cfg.d_model, cfg.d_model, batch_first=True)

    def forward(self, input_ids=None, attention_mask=None, output_hidden_states=False, **_: Any) -> BackboneOutput:
        h, _ = self.gru(self.embed(input_ids))  # (B, T, C)
        return BackboneOutput(h)

    @property
    def num_hidden_states(self) -> int:
        return 2

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed

    def layer_groups(self) -> list[list[nn.Parameter]]:
        return [list(self.embed.parameters()), list(self.gru.parameters()), []]

    @classmethod
    def estimate_flops(cls, cfg, seq_len, mode="train", decoder_len=None, n_predicted=None) -> float:
        return 6.0 * 3 * 2 * cfg.d_model * cfg.d_model * seq_len

    def new_cache(self, batch, capacity, dtype, device, zeros=False) -> GRUState:
        return GRUState(torch.zeros(1, batch, self.config.d_model, dtype=dtype, device=device))

    def decode(self, ids, mask, positions, cache, memory=None, memory_mask=None) -> torch.Tensor:
        out, h = self.gru(self.embed(ids), cache.h if cache is not None else None)  # (B, T, C)
        if cache is not None:
            cache.h, cache.length = h, cache.length + ids.shape[1]
        return out


class ToyLM(nn.Module):
    """A model as generation sees one: ``config``, ``backbone`` and an ``lm`` head."""

    def __init__(self, cfg: ToyConfig) -> None:
        super().__init__()
        self.config = cfg
        self.backbone = GRULM(cfg)
        self.heads = nn.ModuleDict({"lm": nn.Linear(cfg.d_model, cfg.vocab_size)})


@pytest.fixture(scope="module")
def toy() -> ToyLM:
    register_family("gru-lm", GRULM, replace=True)
    torch.manual_seed(0)
    m = ToyLM(ToyConfig()).eval()
    with torch.no_grad():  # larger weights: peaked distributions, so beams and greedy differ
        for p in m.parameters():
            p.mul_(4.0)
    return m


def _prompt(batch: int = 3, length: int = 5) -> torch.Tensor:
    return torch.randint(3, V, (batch, length), generator=torch.Generator().manual_seed(batch))


def _greedy_by_hand(m: ToyLM, ids: torch.Tensor, n: int) -> torch.Tensor:
    """The plain loop: run the prompt, then feed back the argmax with the GRU's hidden state."""
    with torch.no_grad():
        out, h = m.backbone.gru(m.backbone.embed(ids))
        seq = ids
        for _ in range(n):
            nxt = m.heads["lm"](out[:, -1]).argmax(-1, keepdim=True)  # (B, 1)
            seq = torch.cat([seq, nxt], 1)
            out, h = m.backbone.gru(m.backbone.embed(nxt), h)
    return seq


def test_the_toy_family_has_no_fast_step_and_is_registered(toy):
    assert GRULM.family == "gru-lm"
    assert toy.backbone.fast_decode_step(toy.heads["lm"], rows=1) is None


def test_greedy_through_decode_equals_a_hand_written_loop(toy):
    ids = _prompt()
    want = _greedy_by_hand(toy, ids, 9)
    assert torch.equal(generate(toy, ids, max_new_tokens=9, eos_token_id=[]), want)
    # without the decode state: the whole sequence again every step, the same tokens
    assert torch.equal(generate(toy, ids, max_new_tokens=9, eos_token_id=[], use_cache=False), want)
    # compile=True asks for a compiled fast step; there is none, so decode is used as it is
    assert torch.equal(generate(toy, ids, max_new_tokens=9, eos_token_id=[], compile=True), want)


def test_eos_finishes_rows_and_pads_them(toy):
    ids = _prompt()
    free = _greedy_by_hand(toy, ids, 9)
    eos = int(free[0, 5 + 3])  # a token row 0 emits mid-way
    out = generate(toy, ids, max_new_tokens=9, eos_token_id=eos, pad_token_id=PAD)
    first = int((free[0, 5:] == eos).nonzero()[0])
    assert torch.equal(out[0, : 5 + first + 1], free[0, : 5 + first + 1])
    assert (out[0, 5 + first + 1:] == PAD).all()


def test_beam_search_follows_the_states_reorder(toy):
    ids = _prompt()
    kw = dict(max_new_tokens=8, eos_token_id=[], num_beams=3, num_return_sequences=2, return_dict_in_generate=True)
    cached = generate(toy, ids, **kw)
    recomputed = generate(toy, ids, use_cache=False, **kw)  # no state to reorder
    assert cached.sequences.shape == (6, 5 + 8)
    assert torch.equal(cached.sequences, recomputed.sequences)
    torch.testing.assert_close(cached.sequences_scores, recomputed.sequences_scores)
    best = cached.sequences_scores.view(3, 2)
    assert bool((best[:, 0] >= best[:, 1]).all())
    # one beam is greedy search
    one = generate(toy, ids, max_new_tokens=8, eos_token_id=[], num_beams=1)
    assert torch.equal(one, _greedy_by_hand(toy, ids, 8))


def test_sampling_is_seeded_and_equal_with_or_without_the_state(toy):
    ids = _prompt(2)
    kw = dict(max_new_tokens=10, eos_token_id=[], do_sample=True, top_k=10, top_p=0.9, seed=7, num_return_sequences=2)
    a, b = generate(toy, ids, **kw), generate(toy, ids, **kw)
    assert a.shape == (4, 15) and torch.equal(a, b)
    assert torch.equal(a, generate(toy, ids, use_cache=False, **kw))


def test_scoring_through_decode(toy):
    ids = _prompt(2, 7)
    lp = token_logprobs(toy, ids)
    with torch.no_grad():
        h, _ = toy.backbone.gru(toy.backbone.embed(ids))
        want = toy.heads["lm"](h[:, :-1]).log_softmax(-1).gather(2, ids[:, 1:, None]).squeeze(2)
    assert lp[:, 0].eq(0).all()
    torch.testing.assert_close(lp[:, 1:], want)
    seq = generate(toy, ids[:, :3], max_new_tokens=4, eos_token_id=[])
    ppl = generation_perplexity(toy, ids[:, :3], seq, eos_token_id=[])
    assert ppl.shape == (2,) and bool(torch.isfinite(ppl).all()) and bool((ppl >= 1).all())


def test_a_family_that_does_not_generate_is_refused_in_one_line(toy):
    class Bag(GRULM):
        can_generate = False

    register_family("gru-bag", Bag, replace=True)
    m = ToyLM(ToyConfig(family="gru-bag"))
    m.backbone = Bag(m.config)
    with pytest.raises(ConfigError, match="needs a decoder or encoder-decoder.*family='gru-bag'") as e:
        generate(m, _prompt(), max_new_tokens=2)
    assert "\n" not in str(e.value)
