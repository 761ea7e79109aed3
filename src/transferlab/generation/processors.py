"""The logits processors of one ``generate`` call, in ``transformers``' order: repetition penalty,
no-repeat n-grams, bad words, min length, forced bos/eos, then (sampling) temperature, top-k and
top-p; and the stop-string check. Each works on float32 (B, V) scores."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .config import GenerationConfig


def top_k_filter(scores: torch.Tensor, k: int, min_keep: int = 1) -> torch.Tensor:
    """Set all but the ``k`` highest scores of each row to -inf (ties at the k-th value stay).

    Args:
        scores: (B, V) logits or log-probs.
        k: how many to keep (0 or >= V: no-op).
        min_keep: keep at least this many.

    Returns:
        (B, V) filtered scores (a new tensor).
    """
    if k <= 0:
        return scores
    k = min(max(k, min_keep), scores.shape[-1])
    if k >= scores.shape[-1]:
        return scores
    kth = torch.topk(scores, k, dim=-1).values[..., -1:]  # (B, 1)
    return scores.masked_fill(scores < kth, -math.inf)


def top_p_filter(scores: torch.Tensor, p: float, min_keep: int = 1) -> torch.Tensor:
    """Nucleus filtering: keep the smallest set of tokens whose probability mass reaches ``p``.

    Tokens are sorted by probability; a token is kept when the mass of the tokens ranked above
    it is still below ``p``. So with probabilities (0.5, 0.3, 0.15, 0.05), ``p=0.75`` keeps the
    first two and ``p=0.85`` the first three.

    Args:
        scores: (B, V) logits (the distribution is their softmax).
        p: mass in (0, 1]; 1 keeps everything.
        min_keep: keep at least this many tokens.

    Returns:
        (B, V) scores with the removed tokens at -inf.
    """
    if p >= 1.0:
        return scores
    sorted_scores, order = torch.sort(scores, dim=-1, descending=True)  # (B, V)
    probs = sorted_scores.softmax(-1)
    mass_before = probs.cumsum(-1) - probs  # mass of strictly higher-ranked tokens
    remove = mass_before >= p
    remove[..., :min_keep] = False
    return scores.masked_fill(remove.scatter(-1, order, remove), -math.inf)


def _repetition_penalty(scores: torch.Tensor, seen_ids: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL (Keskar et al. 2019) as in ``transformers``: scores of ids in ``seen_ids`` (B, L) are
    divided by ``penalty`` when positive and multiplied when negative. Ids >= V (prompt padding
    masked out by the caller) land in a spare column that is dropped."""
    V = scores.shape[-1]
    spare = bool((seen_ids >= V).any())
    if spare:
        scores = F.pad(scores, (0, 1))
    s = scores.gather(1, seen_ids)
    s = torch.where(s < 0, s * penalty, s / penalty)
    out = scores.scatter(1, seen_ids, s)
    return out[:, :V] if spare else out


class _Processor:
    """The logits pipeline of one call, in ``transformers``' order: repetition penalty, no-repeat
    n-grams, bad words, min length / min new tokens, forced bos/eos, then (sampling only)
    temperature, top-k, top-p. Each is skipped when its setting is off, so plain greedy decoding
    pays nothing for them.

    Args:
        gc: the call's settings.
        eos: end ids the model can produce.
        max_length: decoder length limit (prompt / start token + max_new_tokens).
        beams: beam search (sampling then keeps at least 2 tokens, as transformers does).
        prompt_pad: (rows,) left-padding columns of each row's prompt (decoders), ignored by the
            repetition penalty as ``transformers`` >= 4.57 ignores them; None = no padding.
    """

    def __init__(self, gc: GenerationConfig, eos: list[int], max_length: int, beams: bool,
                 prompt_pad: torch.Tensor | None = None) -> None:
        self.gc, self.eos, self.max_length = gc, eos, max_length
        self.min_keep = 2 if (beams and gc.do_sample) else 1
        self.prompt_pad = prompt_pad if prompt_pad is not None and bool(prompt_pad.any()) else None
        self.bad = _BadWords(gc.bad_words_ids, eos) if gc.bad_words_ids else None

    def __call__(self, scores: torch.Tensor, seq: torch.Tensor, n_new: int) -> torch.Tensor:
        """scores (B, V) float32; seq (B, cur_len) the sequences so far; n_new tokens generated."""
        gc = self.gc
        cur_len = seq.shape[1]
        if gc.repetition_penalty != 1.0:
            seen = seq
            if self.prompt_pad is not None:  # pads of left-padded prompts are not "seen" tokens
                cols = torch.arange(cur_len, device=seq.device)
                seen = seq.masked_fill(cols[None, :] < self.prompt_pad[:, None], scores.shape[-1])
            scores = _repetition_penalty(scores, seen, gc.repetition_penalty)
        if gc.no_repeat_ngram_size:
            scores = _no_repeat_ngram(scores, seq, gc.no_repeat_ngram_size)
        if self.bad is not None:
            scores = self.bad(scores, seq)
        if self.eos and (n_new < gc.min_new_tokens or cur_len < gc.min_length):
            scores = scores.clone()
            scores[:, self.eos] = -math.inf
        if gc.forced_bos_token_id is not None and cur_len == 1:
            scores = torch.full_like(scores, -math.inf)
            scores[:, gc.forced_bos_token_id] = 0.0
        if gc.forced_eos_token_id is not None and cur_len == self.max_length - 1:
            scores = torch.full_like(scores, -math.inf)
            scores[:, gc.forced_eos_token_id] = 0.0
        if gc.do_sample:
            if gc.temperature != 1.0:
                scores = scores / gc.temperature
            if gc.top_k:
                scores = top_k_filter(scores, gc.top_k, self.min_keep)
            if gc.top_p < 1.0:
                scores = top_p_filter(scores, gc.top_p, self.min_keep)
        return scores


def _no_repeat_ngram(scores: torch.Tensor, seq: torch.Tensor, n: int) -> torch.Tensor:
    """Ban every token that would complete an n-gram already in the row (``transformers``'
    ``NoRepeatNGramLogitsProcessor``, vectorised): the last n - 1 tokens are matched against
    every window of the sequence, and a matching window bans the token that followed it.

    Args:
        scores: (B, V) processed scores.
        seq: (B, L) the sequences so far (prompt included for decoders).
        n: the n-gram size.

    Returns:
        (B, V) scores with the banned tokens at -inf.
    """
    L = seq.shape[1]
    if L < n:
        return scores
    windows = seq.unfold(1, n, 1)  # (B, L - n + 1, n)
    prefix = seq[:, L - n + 1:]  # (B, n - 1)
    match = (windows[..., :-1] == prefix[:, None, :]).all(-1)  # (B, W)
    V = scores.shape[-1]
    banned = torch.zeros(scores.shape[0], V + 1, dtype=torch.bool, device=scores.device)
    # non-matching windows write into a spare column, so they cannot unban another window's token
    banned.scatter_(1, torch.where(match, windows[..., -1].clamp(max=V), V), True)
    return scores.masked_fill(banned[:, :V], -math.inf)


class _BadWords:
    """``bad_words_ids`` as ``transformers``' ``NoBadWordsLogitsProcessor``: one-token entries
    are banned at every step; a longer entry bans its last token when the sequence ends with
    the rest. Entries equal to ``[eos]`` are dropped (eos stays possible)."""

    def __init__(self, words: list[list[int]], eos: list[int]) -> None:
        words = [w for w in words if not (len(w) == 1 and w[0] in eos)]
        self.single = sorted({w[0] for w in words if len(w) == 1})
        by_len: dict[int, list[list[int]]] = {}
        for w in words:
            if len(w) > 1:
                by_len.setdefault(len(w) - 1, []).append(w)
        self.multi = [(torch.tensor([w[:-1] for w in g]), torch.tensor([w[-1] for w in g])) for g in by_len.values()]
        self._checked = False

    def __call__(self, scores: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
        V = scores.shape[-1]
        if not self._checked:
            big = sorted({t for t in self.single if t >= V} | {int(t) for p, l in self.multi for t in
                                                              (*p.flatten().tolist(), *l.tolist()) if t >= V})
            if big:
                raise ConfigError(f"generate: bad_words_ids has id(s) {big} outside the vocabulary [0, {V})")
            self.multi = [(p.to(scores.device), l.to(scores.device)) for p, l in self.multi]
            self._checked = True
        banned = torch.zeros_like(scores, dtype=torch.bool)
        if self.single:
            banned[:, self.single] = True
        for prefixes, last in self.multi:  # prefixes (W, k), last (W,)
            k = prefixes.shape[1]
            if k > seq.shape[1]:
                continue
            hit = (seq[:, None, -k:] == prefixes[None]).all(-1)  # (B, W): the row ends with entry w's prefix
            _ban_rows(banned, hit, last)
        return scores.masked_fill(banned, -math.inf)


def _ban_rows(banned: torch.Tensor, hit: torch.Tensor, last: torch.Tensor) -> None:
    """banned[b, last[w]] |= hit[b, w] (in place; several entries may share a last token)."""
    V = banned.shape[1]
    spare = torch.zeros(banned.shape[0], V + 1, dtype=torch.bool, device=banned.device)
    spare.scatter_(1, torch.where(hit, last[None].expand_as(hit), V), True)
    banned |= spare[:, :V]


class _StopStrings:
    """Marks sequences whose generated text contains a stop string (decoding only a tail)."""

    def __init__(self, tokenizer: Any, stops: list[str]) -> None:
        self.tok, self.stops = tokenizer, stops
        # a character can take up to 4 byte-level tokens; leave slack for merges
        self.window = 4 * max(len(s) for s in stops) + 4

    def __call__(self, gen: torch.Tensor) -> torch.Tensor:
        """gen (N, n_new) generated ids -> (N,) bool."""
        tail = gen[:, -self.window:].tolist()
        return torch.tensor([any(s in self.tok.decode(t) for s in self.stops) for t in tail], device=gen.device)
