"""Decoding: :func:`generate` (greedy, sampling, beam search) over a model's backbone.

The prompt runs once through ``Backbone.decode`` (LM head on the last position only, into a
decode state from ``new_cache`` sized for the whole call); every later token goes through the
backbone's ``fast_decode_step`` when it has one (the transformer families' lean step,
:mod:`transferlab.models.decode_step`; ``compile=True`` compiles it), else through ``decode``
again. Beam search reorders the state with ``DecodeState.reorder``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterable

import torch
import torch.nn.functional as F

from ..config import Family
from ..errors import ConfigError
from ..models.backbone import DecodeState, backbone_of
# the compiled decode step traces under inductor's freezing flag, set once per call (not per token)
from .config import GenerationConfig
from .processors import _Processor, _StopStrings


@dataclass
class GenerateOutput:
    """What ``generate(..., return_dict_in_generate=True)`` returns."""

    sequences: torch.Tensor  # (B * num_return_sequences, L)
    scores: tuple[torch.Tensor, ...] | None = None  # per step (B', V) processed scores
    sequences_scores: torch.Tensor | None = None  # beams: length-penalised log-prob per sequence

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)


# ---------------------------------------------------------------------------------- the model side
class _LM:
    """What decoding asks of a TransferModel, resolved once per ``generate``: its backbone (any
    family implementing :class:`~transferlab.models.backbone.Backbone`'s decoding members) and its
    LM head."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.cfg = model, model.config
        backbone = backbone_of(model)
        if not backbone.can_generate:
            if backbone.family == Family.ENCODER.value:
                raise ConfigError(
                    "generate needs a decoder or encoder-decoder model; this one is an encoder "
                    "(family=encoder), which predicts masked tokens rather than continuations"
                )
            raise ConfigError(f"generate needs a decoder or encoder-decoder model; this one is "
                              f"family={backbone.family!r}, which does not continue text")
        self.backbone = backbone
        self.is_seq2seq = bool(backbone.is_encoder_decoder)
        self.head = _lm_head(model)
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.table_limit = backbone.position_limit  # None: positions never run out

    def cache(self, batch: int, capacity: int, zeros: bool = False) -> DecodeState:
        """An empty decode state with room for ``capacity`` positions (no regrowth while decoding).
        ``zeros``: for readers of the whole cache (the compiled step)."""
        return self.backbone.new_cache(batch, capacity, self.dtype, self.device, zeros=zeros)

    def hidden(self, ids: torch.Tensor, mask: torch.Tensor | None, pos: torch.Tensor | None,
               cache: DecodeState | None, memory: torch.Tensor | None = None,
               memory_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states (B, T, C) of the causal stack for ``ids`` (B, T), extending ``cache``."""
        return self.backbone.decode(ids, mask, pos, cache, memory, memory_mask)

    def logits(self, ids: torch.Tensor, mask: torch.Tensor | None, pos: torch.Tensor | None,
               cache: DecodeState | None, memory: torch.Tensor | None = None,
               memory_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Float32 next-token logits (B, V) for the last position of ``ids`` (B, T)."""
        h = self.hidden(ids, mask, pos, cache, memory, memory_mask)  # (B, T, C)
        return self.head(h[:, -1]).float()  # (B, V): the head sees one position, not T

    def encode(self, ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Encoder memory (B, S, C) of an encoder-decoder."""
        return self.backbone.encode(ids, mask)

    def fast_step(self, rows: int, compiled: bool, pack: bool) -> Any:
        """The backbone's accelerated one-token step for ``rows`` rows, or None (then every token
        goes through :meth:`logits`)."""
        return self.backbone.fast_decode_step(self.head, rows, compiled=compiled, pack=pack)


def _lm_head(model: torch.nn.Module) -> torch.nn.Module:
    heads = getattr(model, "heads", {})
    kinds = {name: model.config.heads.get(name, {}).get("type", name) for name in heads}
    for name, kind in kinds.items():
        if kind == "lm":
            return heads[name]
    raise ConfigError(
        "generation and scoring need an 'lm' head; this model has "
        + (f"heads: {', '.join(kinds)}" if kinds else "no heads")
        + " (add one with model.add_head('lm'))"
    )


def _as_ids(eos: int | Iterable[int] | None, fallback: int) -> list[int]:
    if eos is None:
        return [fallback] if fallback is not None and fallback >= 0 else []
    if isinstance(eos, int):
        return [eos]
    return [int(e) for e in eos]


# ---------------------------------------------------------------------------------- generate
def generate(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    generation_config: GenerationConfig | None = None,
    *,
    streamer: Any = None,
    tokenizer: Any = None,
    generator: torch.Generator | None = None,
    **kwargs: Any,
) -> torch.Tensor | GenerateOutput:
    """Generate continuations (decoders) or outputs (encoder-decoders) token by token.

    Args:
        model: a :class:`~transferlab.models.TransferModel` with an ``lm`` head; decoder or
            encoder-decoder family.
        input_ids: (B, T) prompt ids (decoders; left-padded when lengths differ) or encoder
            input ids (encoder-decoders; either padding side).
        attention_mask: (B, T) 1 for tokens, 0 for padding; None = no padding.
        generation_config: base settings, ours or a ``transformers.GenerationConfig`` (its set
            fields; ones without an equivalent here raise); keyword arguments override its
            fields. Both are layered over ``model.generation_config`` (a saved
            ``generation_config.json``), as ``transformers`` layers them: kwargs > this > the
            model's > defaults.
        streamer: an object with ``put(ids)``/``end()`` (e.g. :class:`TextStreamer`, or
            ``transformers``' streamers), or a callable receiving the new token ids (B,) of
            every step. Not with beam search.
        tokenizer: needed for ``stop_strings`` (anything with ``decode``).
        generator: a ``torch.Generator`` for sampling (overrides ``seed``).
        **kwargs: any :class:`GenerationConfig` field: ``max_new_tokens``, ``max_length``,
            ``min_length``, ``no_repeat_ngram_size``, ``bad_words_ids``, ``do_sample``,
            ``temperature``, ``top_k``, ``top_p``, ``num_beams``, ``length_penalty``,
            ``early_stopping``, ``eos_token_id``, ``pad_token_id``, ``stop_strings``,
            ``repetition_penalty``, ``seed``, ``use_cache``, ...

    Returns:
        (B * num_return_sequences, L) token ids: the prompt followed by the new tokens for
        decoders, the decoder start token followed by the new tokens for encoder-decoders.
        Finished sequences are padded with ``pad_token_id``. With
        ``return_dict_in_generate=True`` a :class:`GenerateOutput`.

    Raises:
        ConfigError: bad settings (e.g. ``top_p`` outside (0, 1], ``temperature <= 0`` when
            sampling), an encoder model or one without an LM head, right-padded decoder
            prompts, ids outside the vocabulary, or a prompt that does not fit the position
            table (unless ``truncation=True``).
    """
    # ``model.generate(**tok(texts, ...))`` may pass segment ids: no generating family uses them
    kwargs.pop("token_type_ids", None)
    gc = _merged_config(getattr(model, "generation_config", None), generation_config, kwargs)
    lm = _LM(model)
    if gc.stop_strings and tokenizer is None:
        raise ConfigError("generate: stop_strings need tokenizer= (to decode the generated text)")
    if streamer is not None and gc.num_beams > 1:
        raise ConfigError("generate: streaming is not supported with beam search (num_beams > 1)")
    if gc.do_sample and generator is None and gc.seed is not None:
        generator = torch.Generator(device=lm.device).manual_seed(int(gc.seed))
    input_ids, attention_mask, gc = _check_inputs(lm, gc, input_ids, attention_mask)
    was_training = model.training
    model.eval()  # dropout off: generation is inference (restored afterwards)
    try:
        with torch.inference_mode(), lm.backbone.decode_context(gc.compile):
            if gc.num_beams > 1:
                out = _beam_search(lm, gc, input_ids, attention_mask, tokenizer, generator)
            else:
                out = _sample(lm, gc, input_ids, attention_mask, streamer, tokenizer, generator)
    finally:
        model.train(was_training)
    return out if gc.return_dict_in_generate else out.sequences


def _check_inputs(lm: _LM, gc: GenerationConfig, ids: Any, mask: Any) -> tuple[torch.Tensor, torch.Tensor | None, GenerationConfig]:
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype not in (torch.int64, torch.int32):
        shape = tuple(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise ConfigError(f"generate: input_ids must be a (batch, length) integer tensor, got {shape}")
    B, T = ids.shape
    if B == 0:
        raise ConfigError("generate: input_ids has an empty batch")
    if T == 0:
        raise ConfigError("generate: empty prompt; start decoders with at least one token (e.g. the bos/eos id)")
    gc = _resolve_lengths(lm, gc, T)
    V = lm.cfg.vocab_size
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= V:
        raise ConfigError(f"generate: input_ids must be in [0, {V}) (the model's vocab_size), got values in [{lo}, {hi}]")
    ids = ids.to(lm.device, torch.long)
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != (B, T):
            got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ConfigError(f"generate: attention_mask must have the shape of input_ids {(B, T)}, got {got}")
        mask = mask.to(lm.device, torch.long)
        if bool(mask.all()):
            mask = None  # nothing is padded: take the mask-free fast path
        elif bool((mask.sum(-1) == 0).any()):
            raise ConfigError("generate: a row of attention_mask is all zeros (an empty prompt)")
        elif not lm.is_seq2seq and not bool((mask[:, 1:] >= mask[:, :-1]).all()):
            raise ConfigError(
                "generate: decoder-only prompts must be left-padded (the new tokens follow the last "
                "column); set tokenizer.padding_side = 'left'"
            )
    limit = lm.table_limit
    if limit is not None:
        if lm.is_seq2seq:
            if T > limit:
                raise ConfigError(f"generate: encoder input of {T} tokens is longer than max_positions={limit}; "
                                  f"truncate it when tokenizing, e.g. tok(texts, truncation=True, max_length={limit})")
            if 1 + gc.max_new_tokens > limit:
                raise ConfigError(f"generate: decoder start + max_new_tokens={gc.max_new_tokens} exceeds the "
                                  f"model's max_positions={limit}; lower max_new_tokens")
        elif T + gc.max_new_tokens > limit:
            if not gc.truncation or gc.max_new_tokens >= limit:
                raise ConfigError(
                    f"generate: prompt of {T} tokens + max_new_tokens={gc.max_new_tokens} exceeds the model's "
                    f"max_positions={limit}; shorten the prompt, lower max_new_tokens, or pass truncation=True "
                    "to drop the oldest prompt tokens (CLI: --truncate)"
                )
            # left truncation: the most recent tokens matter most for a continuation; with left
            # padding every row keeps its last tokens, so no row becomes empty
            keep = limit - gc.max_new_tokens
            ids, mask = ids[:, T - keep:], (mask[:, T - keep:] if mask is not None else None)
            if mask is not None and bool(mask.all()):
                mask = None
    return ids, mask, gc


def _merged_config(model_gc: Any, user_gc: Any, kwargs: dict[str, Any]) -> GenerationConfig:
    """kwargs > ``generation_config=`` > the model's saved ``generation_config`` > defaults.

    As ``transformers`` does, a config only contributes the settings it sets (ours: those that
    differ from the defaults; theirs: ``to_diff_dict``), so a saved ``num_beams=4`` survives a
    ``GenerationConfig(max_new_tokens=5)`` passed by the caller, and is overridden by ``num_beams=1``.
    """
    fields: dict[str, Any] = {}
    for g in (model_gc, user_gc):
        if g is None:
            continue
        if not isinstance(g, GenerationConfig):
            g = GenerationConfig.from_hf(g, strict=True, where="generate: generation_config")
        fields.update(g.set_fields())
    return GenerationConfig(**fields).replace(**kwargs)


def _resolve_lengths(lm: _LM, gc: GenerationConfig, T: int) -> GenerationConfig:
    """``max_new_tokens`` from ``max_length`` as ``transformers`` counts it: the decoder's input
    length (the prompt for decoders, the start token for encoder-decoders) is part of it."""
    if gc.max_new_tokens is not None:
        return gc
    if gc.max_length is None:
        return dataclasses.replace(gc, max_new_tokens=20)
    start = 1 if lm.is_seq2seq else T
    if start >= gc.max_length:
        what = "the decoder start token" if lm.is_seq2seq else f"a prompt of {T} tokens"
        raise ConfigError(f"generate: max_length={gc.max_length} leaves no room after {what} (max_length counts "
                          "it, as in transformers); raise max_length or set max_new_tokens")
    return dataclasses.replace(gc, max_new_tokens=gc.max_length - start)


def _settings(lm: _LM, gc: GenerationConfig) -> tuple[list[int], int, torch.Tensor | None]:
    V = lm.cfg.vocab_size
    given = _as_ids(gc.eos_token_id, lm.cfg.eos_token_id)
    # an eos the model cannot produce (GPT2Config(vocab_size=173) keeps eos=50256) never ends a
    # sequence: transformers then runs to the length limit, and so do we
    eos = [e for e in given if 0 <= e < V]
    pad = gc.pad_token_id if gc.pad_token_id is not None else lm.cfg.pad_token_id
    if pad is None or pad < 0:
        pad = eos[0] if eos else 0
    if not 0 <= pad < V:
        if eos or gc.stop_strings:  # finished rows feed it back into the model
            raise ConfigError(f"generate: pad_token_id {pad} is outside the vocabulary [0, {V}); finished "
                              "sequences are continued with it (pass pad_token_id=)")
        pad = 0  # nothing can finish, so no row is ever padded: any in-range id will do
    eos_t = torch.tensor(eos, device=lm.device) if eos else None
    return eos, int(pad), eos_t


def _decoder_start(lm: _LM, gc: GenerationConfig) -> int:
    start = gc.decoder_start_token_id
    if start is None:
        start = lm.cfg.decoder_start_token_id
        if start is None or start < 0:
            start = lm.cfg.bos_token_id
    if start is None or not 0 <= start < lm.cfg.vocab_size:
        raise ConfigError("generate: this encoder-decoder has no decoder_start_token_id (config "
                          "decoder_start_token_id and bos_token_id are unset); pass decoder_start_token_id=")
    return int(start)


def _prompt_pad(lm: _LM, mask: torch.Tensor | None, expand: int) -> torch.Tensor | None:
    """(B * expand,) left-padding columns of each decoder prompt, None without padding."""
    if lm.is_seq2seq or mask is None:
        return None
    return (mask != 0).int().argmax(1).repeat_interleave(expand)


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Left-padding-aware position ids (B, T): cumsum(mask) - 1, pads at 0 (as transformers)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def _prefill(lm: _LM, gc: GenerationConfig, ids: torch.Tensor, mask: torch.Tensor | None, expand: int,
             max_length: int):
    """Run the prompt once and set up the decoding state for B * ``expand`` rows.

    Returns (state dict, logits (B*expand, V), seq buffer (B*expand, max_length), cur_len).
    Prompts are computed once per prompt, not once per beam/sample: the cache rows are copied.
    """
    B = ids.shape[0]
    rows = torch.arange(B, device=lm.device).repeat_interleave(expand) if expand > 1 else None
    st: dict[str, Any] = {"memory": None, "memory_mask": None, "mask": None, "pos": None}
    step = None
    if gc.use_cache and gc.max_new_tokens > 1:
        # packing costs about as much as a few tokens save: not worth it for a handful of tokens
        step = lm.fast_step(B * expand, compiled=gc.compile, pack=gc.max_new_tokens >= 8)
    compiled = step is not None and gc.compile
    if lm.is_seq2seq:
        start = _decoder_start(lm, gc)
        memory = lm.encode(ids, mask)  # (B, S, C)
        if compiled:  # static shapes: pad the encoder output to a multiple of 64 (masked)
            pad = -memory.shape[1] % 64
            if pad:
                mask = torch.ones(ids.shape, dtype=torch.long, device=lm.device) if mask is None else mask
                memory, mask = F.pad(memory, (0, 0, 0, pad)), F.pad(mask, (0, pad), value=0)
        if rows is not None:
            memory = memory.index_select(0, rows)
            mask = mask.index_select(0, rows) if mask is not None else None
        st["memory"], st["memory_mask"] = memory, mask
        prompt = torch.full((B * expand, 1), start, dtype=torch.long, device=lm.device)
    else:
        prompt = ids if rows is None else ids.index_select(0, rows)
        if mask is not None:  # the mask grows by one column per step: preallocate it
            full = torch.ones(B * expand, max_length, dtype=torch.long, device=lm.device)
            full[:, : ids.shape[1]] = mask if rows is None else mask.index_select(0, rows)
            st["mask"] = full
            st["pos"] = _positions(mask)[:, -1:] + 1  # (B, 1) next position of each row
            if rows is not None:
                st["pos"] = st["pos"].index_select(0, rows)
    T = prompt.shape[1]
    seq = torch.empty(B * expand, max_length, dtype=torch.long, device=lm.device)
    seq[:, :T] = prompt
    cache = None
    # a compiled step has static shapes: round the cache up so nearby lengths share one graph
    capacity = -(-max_length // 64) * 64 if compiled else max_length
    if gc.use_cache:
        if lm.is_seq2seq:
            cache = lm.cache(B * expand, capacity, zeros=compiled)
            logits = lm.logits(prompt, None, None, cache, st["memory"], st["memory_mask"])
        else:
            # the prompt runs on B rows; its cache rows are then copied to every beam/sample
            cache = lm.cache(B, capacity, zeros=compiled)
            pmask = mask
            logits = lm.logits(ids, pmask, _positions(pmask) if pmask is not None else None, cache)
            if rows is not None:
                cache.reorder(rows)
                logits = logits.index_select(0, rows)
    else:
        logits = _full_logits(lm, st, seq, T)
    st["cache"] = cache
    st["step"] = step
    if step is not None:
        step.adopt(cache)
        st["bias"] = step.padding_bias(st["mask"], capacity)
        st["mem_bias"] = step.padding_bias(st["memory_mask"])
    return st, logits, seq, T


def _full_logits(lm: _LM, st: dict[str, Any], seq: torch.Tensor, cur: int) -> torch.Tensor:
    """No-cache path: recompute the whole sequence so far (B, cur) and return last logits."""
    if lm.is_seq2seq:
        return lm.logits(seq[:, :cur], None, None, None, st["memory"], st["memory_mask"])
    mask = st["mask"][:, :cur] if st["mask"] is not None else None
    return lm.logits(seq[:, :cur], mask, _positions(mask) if mask is not None else None, None)


def _step_logits(lm: _LM, st: dict[str, Any], seq: torch.Tensor, cur: int) -> torch.Tensor:
    """Logits after the token at column ``cur - 1`` was appended."""
    if st["cache"] is None:
        return _full_logits(lm, st, seq, cur)
    step = st["step"]
    if step is not None:  # the lean path: one call, no modules
        pos = st["pos"]
        if pos is not None:
            st["pos"] = pos + 1
        return step(seq[:, cur - 1], st["cache"], pos, st["bias"], st["mem_bias"])
    tok = seq[:, cur - 1 : cur]  # (B, 1)
    if lm.is_seq2seq:
        return lm.logits(tok, None, None, st["cache"], st["memory"], st["memory_mask"])
    if st["mask"] is None:  # no padding anywhere: positions default to the cache length
        return lm.logits(tok, None, None, st["cache"])
    pos = st["pos"]
    st["pos"] = pos + 1
    return lm.logits(tok, st["mask"][:, :cur], pos, st["cache"])


def _sample(lm: _LM, gc: GenerationConfig, ids: torch.Tensor, mask: torch.Tensor | None, streamer: Any,
            tokenizer: Any, generator: torch.Generator | None) -> GenerateOutput:
    """Greedy decoding or multinomial sampling (one row per prompt x return sequence)."""
    eos, pad, eos_t = _settings(lm, gc)
    n = gc.num_return_sequences
    T0 = 1 if lm.is_seq2seq else ids.shape[1]
    max_length = T0 + gc.max_new_tokens
    st, logits, seq, cur = _prefill(lm, gc, ids, mask, n, max_length)
    process = _Processor(gc, eos, max_length, beams=False, prompt_pad=_prompt_pad(lm, mask, n))
    stop = _StopStrings(tokenizer, gc.stop_strings) if gc.stop_strings else None
    put = getattr(streamer, "put", None) if streamer is not None else None
    if put is not None:
        put(seq[:, :cur].cpu())
    unfinished = torch.ones(seq.shape[0], dtype=torch.bool, device=lm.device)
    all_scores: list[torch.Tensor] = []
    for step in range(gc.max_new_tokens):
        scores = process(logits, seq[:, :cur], step)
        if gc.output_scores:
            all_scores.append(scores)
        if gc.do_sample:
            nxt = torch.multinomial(scores.softmax(-1), 1, generator=generator).squeeze(1)  # (B,)
        else:
            nxt = scores.argmax(-1)  # (B,)
        if eos or stop is not None:
            nxt = torch.where(unfinished, nxt, pad)  # finished rows keep emitting pad
        seq[:, cur] = nxt
        cur += 1
        if put is not None:
            put(nxt.cpu())
        elif streamer is not None:
            streamer(nxt)
        if eos:
            unfinished &= ~torch.isin(nxt, eos_t)
        if stop is not None:
            unfinished &= ~stop(seq[:, T0:cur])
        if (eos or stop is not None) and not bool(unfinished.any()):
            break
        if step + 1 < gc.max_new_tokens:
            logits = _step_logits(lm, st, seq, cur)
    if streamer is not None and hasattr(streamer, "end"):
        streamer.end()
    return GenerateOutput(seq[:, :cur].clone(), tuple(all_scores) if gc.output_scores else None)


def _beam_search(lm: _LM, gc: GenerationConfig, ids: torch.Tensor, mask: torch.Tensor | None, tokenizer: Any,
                 generator: torch.Generator | None) -> GenerateOutput:
    """Vectorised beam search, a port of ``transformers`` (>= 4.50) ``_beam_search``.

    Each step keeps the top K = max(2, 1 + n_eos) * num_beams continuations over all beams (so
    ``num_beams`` of them can continue even if some end), moves the ended ones that are among
    the top ``num_beams`` into a per-prompt pool of finished hypotheses scored with the length
    penalty, and continues the best ``num_beams`` unfinished ones.
    """
    eos, pad, eos_t = _settings(lm, gc)
    nb = gc.num_beams
    B = ids.shape[0]
    dpl = 1 if lm.is_seq2seq else ids.shape[1]  # decoder prompt length
    max_length = dpl + gc.max_new_tokens
    if gc.max_new_tokens == 0:
        st, _, seq, cur = _prefill(lm, gc, ids, mask, 1, max_length) if lm.is_seq2seq else (None, None, ids, dpl)
        seqs = seq[:, :cur].repeat_interleave(gc.num_return_sequences, 0)
        return GenerateOutput(seqs.clone(), None, torch.zeros(seqs.shape[0], device=lm.device))
    st, logits, flat, cur = _prefill(lm, gc, ids, mask, nb, max_length)
    V = logits.shape[-1]
    dev = lm.device
    K = max(2, 1 + len(eos)) * nb
    top_nb = torch.zeros(K, dtype=torch.bool, device=dev)
    top_nb[:nb] = True
    process = _Processor(gc, eos, max_length, beams=True, prompt_pad=_prompt_pad(lm, mask, nb))
    stop = _StopStrings(tokenizer, gc.stop_strings) if gc.stop_strings else None

    running = torch.full((B, nb, max_length), pad, dtype=torch.long, device=dev)
    running[:, :, :dpl] = flat[:, :dpl].view(B, nb, dpl)
    finished = running.clone()  # best finished hypotheses so far (static shape)
    running_scores = torch.zeros(B, nb, device=dev)
    running_scores[:, 1:] = -1e9  # all beams start identical: only the first may expand at step 1
    finished_scores = torch.full((B, nb), -1e9, device=dev)
    finished_len = torch.zeros(B, nb, dtype=torch.long, device=dev)  # new tokens per finished hyp
    is_done = torch.zeros(B, nb, dtype=torch.bool, device=dev)
    improvable = torch.ones(B, 1, dtype=torch.bool, device=dev)  # early-stop heuristic unsatisfied
    batch_offset = (torch.arange(B, device=dev) * nb)[:, None]  # (B, 1)
    all_scores: list[torch.Tensor] = []

    while True:
        flat_seq = running[:, :, :cur].reshape(B * nb, cur)
        logp = process(F.log_softmax(logits, dim=-1), flat_seq, cur - dpl)  # (B*nb, V)
        if gc.output_scores:
            all_scores.append(logp)
        logp = (logp.view(B, nb, V) + running_scores[:, :, None]).view(B, nb * V)
        # top K continuations over all beams (or K samples without replacement)
        if gc.do_sample:
            idx = torch.multinomial(logp.softmax(-1), K, generator=generator)
            top_logp = logp.gather(1, idx)
            top_logp, order = top_logp.sort(-1, descending=True)
            idx = idx.gather(1, order)
        else:
            top_logp, idx = torch.topk(logp, K)  # (B, K)
        src_beam = idx // V  # (B, K) beam each continuation extends
        tok = idx % V
        cand = running.gather(1, src_beam[:, :, None].expand(B, K, max_length)).clone()  # (B, K, L)
        cand[:, :, cur] = tok
        # which candidates end here: eos, stop string, or the length limit
        ends = torch.isin(tok, eos_t) if eos else torch.zeros_like(tok, dtype=torch.bool)
        if stop is not None:
            ends |= stop(cand[:, :, dpl : cur + 1].reshape(B * K, -1)).view(B, K)
        if cur + 1 >= max_length:
            ends = torch.ones_like(ends)
        # continue with the best num_beams candidates that did not end
        cont_logp = top_logp + ends.float() * -1e9
        nxt = torch.topk(cont_logp, nb).indices  # (B, nb)
        running = cand.gather(1, nxt[:, :, None].expand(B, nb, max_length))
        running_scores = cont_logp.gather(1, nxt)
        beam_idx = (src_beam.gather(1, nxt) + batch_offset).view(-1)  # rows the cache must follow
        # add candidates that ended among the top num_beams to the finished pool
        just_done = ends & top_nb[None, :]
        n_new = cur + 1 - dpl
        scored = top_logp / (n_new ** gc.length_penalty)
        full = is_done.all(-1, keepdim=True) & (gc.early_stopping is True)
        scored = scored + full.float() * -1e9 + (~improvable).float() * -1e9 + (~just_done).float() * -1e9
        m_seq = torch.cat([finished, cand], 1)
        m_scores = torch.cat([finished_scores, scored], 1)
        m_len = torch.cat([finished_len, torch.full_like(tok, n_new)], 1)
        m_done = torch.cat([is_done, just_done], 1)
        keep = torch.topk(m_scores, nb).indices  # (B, nb)
        finished = m_seq.gather(1, keep[:, :, None].expand(B, nb, max_length))
        finished_scores, finished_len, is_done = m_scores.gather(1, keep), m_len.gather(1, keep), m_done.gather(1, keep)

        cur += 1
        # can a running beam still beat the worst finished one? (transformers' heuristic)
        if gc.early_stopping == "never" and gc.length_penalty > 0.0:
            best_len = max_length - dpl
        else:
            best_len = cur - dpl
        best_running = running_scores[:, :1] / (best_len ** gc.length_penalty)
        worst_done = torch.where(is_done, finished_scores.min(1, keepdim=True).values, torch.full_like(finished_scores, -1e9))
        improvable = improvable & (best_running > worst_done).any(-1, keepdim=True)
        open_beams = not (bool(is_done.all()) and gc.early_stopping is True)
        if not (bool(improvable.any()) and open_beams and not bool(ends.all())):
            break
        if st["cache"] is not None:
            st["cache"].reorder(beam_idx)
        flat_next = running.view(B * nb, max_length)
        logits = _step_logits(lm, st, flat_next, cur)

    n = gc.num_return_sequences
    seqs = finished[:, :n].reshape(B * n, max_length)
    out_len = dpl + int(finished_len[:, :n].max())
    return GenerateOutput(seqs[:, :out_len].clone(), tuple(all_scores) if gc.output_scores else None,
                          finished_scores[:, :n].reshape(-1).clone())
