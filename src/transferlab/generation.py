"""Generation with a KV cache: greedy, sampling (temperature, top-k, top-p) and beam search.

``generate(model, input_ids, attention_mask=None, **settings)`` (also ``model.generate(...)``)
follows ``transformers``' ``generate``:

* decoders return the prompt followed by the new tokens, ``(B, T_prompt + n_new)``;
  encoder-decoders return ``decoder_start_token_id`` followed by the new tokens, ``(B, 1 + n_new)``;
* batched prompts of different lengths are **left**-padded; position ids are
  ``cumsum(attention_mask) - 1`` so every prompt starts at position 0 whatever its padding;
* a sequence that produced ``eos_token_id`` (or a stop string) is finished: later columns hold
  ``pad_token_id``; the loop ends when every sequence is finished or after ``max_new_tokens``;
* beam search is a port of ``transformers``' vectorised beam search (length penalty, early stopping
  ``True``/``False``/``"never"``) and returns identical token ids for the same weights;
* ``transformers``' own arguments mean what they mean there: ``max_length``/``min_length`` count
  the prompt (decoders) or the decoder start token (encoder-decoders), ``no_repeat_ngram_size``,
  ``bad_words_ids``, a ``transformers.GenerationConfig`` as ``generation_config=``, and a saved
  ``generation_config.json`` (``model.generation_config``) under the caller's settings; an eos
  the vocabulary cannot hold never ends a sequence (it runs to the length limit).

Decoding asks the model's :class:`~transferlab.models.backbone.Backbone`: the prompt runs once
through ``Backbone.decode`` (LM head on the last position only, into a decode state from
``new_cache`` sized for the whole call); every later token goes through the backbone's
``fast_decode_step`` when it has one (the transformer families' lean step,
:mod:`transferlab.models.decode_step`; ``compile=True`` compiles it), else through ``decode``
again. Beam search reorders the state with ``reorder``. Speed against ``transformers``' ``generate``
is measured in BENCHMARKS.md (generation section). Scores are always processed in float32.

Differences from ``transformers`` (documented, deliberate): the model is put in eval mode for the
call (and restored after); finished beams are padded with ``pad_token_id`` (``transformers``
uses ``eos`` when the pad id is 0); prompts longer than the position table raise
:class:`~transferlab.errors.ConfigError` unless ``truncation=True`` (left truncation).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import warnings
from dataclasses import dataclass
from typing import Any, Iterable, TextIO

import torch
import torch.nn.functional as F

from .config import Family
from .errors import ConfigError
from .models.backbone import DecodeState, backbone_of
# the compiled decode step traces under inductor's freezing flag, set once per call (not per token)
from .models.decode_step import _freezing

__all__ = [
    "GenerationConfig",
    "GenerateOutput",
    "TextStreamer",
    "generate",
    "top_k_filter",
    "top_p_filter",
    "token_logprobs",
    "generation_perplexity",
]


# ---------------------------------------------------------------------------------- settings
@dataclass
class GenerationConfig:
    """Decoding settings; names and defaults follow ``transformers.GenerationConfig``."""

    max_new_tokens: int | None = None
    """Tokens to generate at most (beyond the prompt / decoder start). None: what ``max_length``
    leaves, or 20 when that is unset too (``transformers``' default). Wins over ``max_length``."""
    max_length: int | None = None
    """Length limit as in ``transformers``: it counts the prompt for decoders, and the decoder
    start token (not the encoder input) for encoder-decoders; so ``max_length=20`` gives a
    decoder with a 5-token prompt 15 new tokens, an encoder-decoder 19. Prefer max_new_tokens."""
    min_new_tokens: int = 0
    """EOS is suppressed until this many new tokens exist."""
    min_length: int = 0
    """EOS is suppressed while the sequence (prompt included for decoders, decoder start
    included for encoder-decoders, as ``max_length``) is shorter than this."""
    no_repeat_ngram_size: int = 0
    """No n-gram of this size occurs twice in a sequence (the prompt counts for decoders, as in
    ``transformers``); 0 = off."""
    bad_words_ids: list[list[int]] | None = None
    """Token sequences that are never generated: a one-token entry is banned everywhere, a
    longer one only its last token, right after the others (``transformers``' semantics;
    entries equal to ``[eos]`` are dropped)."""
    do_sample: bool = False
    """Sample from the (filtered) distribution instead of taking the argmax."""
    temperature: float = 1.0
    """Divide logits by this before sampling (> 0; only with do_sample)."""
    top_k: int = 50
    """Keep the k most likely tokens when sampling (0 = off; ``transformers``' default is 50)."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability mass reaches top_p."""
    repetition_penalty: float = 1.0
    """CTRL penalty on every token already in the sequence (>1 discourages repeats)."""
    num_beams: int = 1
    """Beam width; 1 = greedy/sampling."""
    length_penalty: float = 1.0
    """Beam score = sum log p / (new tokens ** length_penalty); > 0 favours longer outputs."""
    early_stopping: bool | str = False
    """Beams: True stops when num_beams hypotheses are done; False a heuristic; "never" the
    canonical (slow) criterion."""
    num_return_sequences: int = 1
    """Sequences returned per prompt (<= num_beams for beam search; any with sampling)."""
    eos_token_id: int | list[int] | None = None
    """End token(s); None = the model config's eos (none when it has none); [] = no eos at all."""
    pad_token_id: int | None = None
    """Id written after a sequence finished; None = the model config's pad id."""
    decoder_start_token_id: int | None = None
    """First decoder token of encoder-decoders; None = the model config's."""
    forced_bos_token_id: int | None = None
    """Force this token as the first generated one (BART-style)."""
    forced_eos_token_id: int | None = None
    """Force this token as the last one when max_new_tokens is reached."""
    stop_strings: list[str] | None = None
    """Stop a sequence once its generated text contains one of these (needs ``tokenizer=``)."""
    seed: int | None = None
    """Seed of a private torch.Generator for sampling (same seed, same text)."""
    use_cache: bool = True
    """Reuse keys/values across steps; False recomputes the whole sequence every step."""
    compile: bool = False
    """Run each new token through ``torch.compile`` (inductor, weights frozen into the graph,
    autotuned GEMMs). The first call per model, batch size and length bucket (multiples of 64)
    compiles for about 30 s on 2 CPU cores; later tokens are faster, mostly at small batches
    (BENCHMARKS.md). The compiled step is kept with the model and rebuilt when its weights change."""
    truncation: bool = False
    """Left-truncate decoder prompts longer than ``max_positions - max_new_tokens`` instead of
    raising (the output then starts with the truncated prompt)."""
    output_scores: bool = False
    """With return_dict_in_generate: keep the processed scores of every step."""
    return_dict_in_generate: bool = False
    """Return a :class:`GenerateOutput` instead of the ids tensor."""

    def validate(self) -> "GenerationConfig":
        """Check ranges and combinations; raise :class:`ConfigError` naming the setting."""
        try:
            return self._validate()
        except TypeError as e:  # e.g. top_p="0.9" from a JSON file: a comparison of str and float
            raise ConfigError(f"generate: a setting has the wrong type ({e}); got "
                              + ", ".join(f"{k}={v!r}" for k, v in self.set_fields().items())) from None

    def _validate(self) -> "GenerationConfig":
        def bad(msg: str) -> None:
            raise ConfigError(f"generate: {msg}")

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        if self.max_new_tokens is not None and (not is_int(self.max_new_tokens) or self.max_new_tokens < 0):
            bad(f"max_new_tokens must be an integer >= 0, got {self.max_new_tokens!r}")
        if self.max_length is not None and (not is_int(self.max_length) or self.max_length < 1):
            bad(f"max_length must be an integer >= 1, got {self.max_length!r}")
        if not is_int(self.min_new_tokens) or self.min_new_tokens < 0:
            bad(f"min_new_tokens must be an integer >= 0, got {self.min_new_tokens!r}")
        if not is_int(self.min_length) or self.min_length < 0:
            bad(f"min_length must be an integer >= 0, got {self.min_length!r}")
        if not is_int(self.no_repeat_ngram_size) or self.no_repeat_ngram_size < 0:
            bad(f"no_repeat_ngram_size must be an integer >= 0 (0 = off), got {self.no_repeat_ngram_size!r}")
        if self.bad_words_ids is not None:
            b = self.bad_words_ids
            if (not isinstance(b, (list, tuple)) or not b
                    or not all(isinstance(w, (list, tuple)) and w and all(is_int(t) and t >= 0 for t in w) for w in b)):
                bad("bad_words_ids must be a non-empty list of non-empty lists of token ids >= 0, e.g. "
                    f"[[5], [17, 9]], got {b!r}")
            self.bad_words_ids = [[int(t) for t in w] for w in b]
        if self.do_sample and not self.temperature > 0:
            bad(f"temperature must be > 0 when sampling, got {self.temperature} "
                "(for deterministic output use do_sample=False, i.e. greedy)")
        if not (isinstance(self.top_k, int) and self.top_k >= 0):
            bad(f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        if not 0.0 < self.top_p <= 1.0:
            bad(f"top_p must be in (0, 1], got {self.top_p}")
        if not self.repetition_penalty > 0:
            bad(f"repetition_penalty must be > 0 (1.0 = off), got {self.repetition_penalty}")
        if not (isinstance(self.num_beams, int) and self.num_beams >= 1):
            bad(f"num_beams must be an integer >= 1, got {self.num_beams!r}")
        if self.early_stopping not in (True, False, "never"):
            bad(f"early_stopping must be True, False or 'never', got {self.early_stopping!r}")
        if not (isinstance(self.num_return_sequences, int) and self.num_return_sequences >= 1):
            bad(f"num_return_sequences must be an integer >= 1, got {self.num_return_sequences!r}")
        if self.num_beams > 1 and not self.do_sample and self.num_return_sequences > self.num_beams:
            bad(f"num_return_sequences={self.num_return_sequences} is more than num_beams={self.num_beams}")
        if self.num_beams == 1 and not self.do_sample and self.num_return_sequences > 1:
            bad("num_return_sequences > 1 needs do_sample=True or num_beams > 1 (greedy output is unique)")
        if isinstance(self.stop_strings, str):
            self.stop_strings = [self.stop_strings]
        if self.stop_strings is not None and not all(isinstance(s, str) and s for s in self.stop_strings):
            bad(f"stop_strings must be non-empty strings, got {self.stop_strings!r}")
        return self

    def replace(self, **kwargs: Any) -> "GenerationConfig":
        """A copy with some settings changed; unknown names raise :class:`ConfigError`."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ConfigError(
                f"generate: unknown argument(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return dataclasses.replace(self, **kwargs).validate()

    def set_fields(self) -> dict[str, Any]:
        """The settings that differ from the defaults: what this config overrides when it is
        layered over another (the model's ``generation_config``), as ``transformers`` does."""
        default = _DEFAULT_FIELDS()
        return {k: v for k, v in dataclasses.asdict(self).items() if v != default[k]}

    @classmethod
    def from_hf(cls, config: Any, strict: bool = True, where: str = "generation_config") -> "GenerationConfig":
        """Our settings from a ``transformers.GenerationConfig`` (or its dict / ``generation_config.json``).

        Only the fields the source sets are taken (``to_diff_dict``), so the defaults of the
        two libraries never leak into each other. Fields that do not change the generated ids
        (``bos_token_id``, ``output_attentions``, cache and assistant settings, ...) are ignored,
        as are other fields at their neutral values (``typical_p=1.0``, ``num_beam_groups=1``).
        Any other field has no equivalent here: ``strict`` raises :class:`ConfigError` naming
        it; otherwise it is dropped with a warning (a saved ``generation_config.json`` should not
        stop a model from loading).
        """
        if isinstance(config, dict):
            raw = dict(config)
        elif hasattr(config, "to_diff_dict"):
            raw = config.to_diff_dict()
        else:
            raise ConfigError(f"{where}: expected a GenerationConfig (ours or transformers') or a dict, "
                              f"got {type(config).__name__}")
        ours = {f.name for f in dataclasses.fields(cls)}
        kept: dict[str, Any] = {}
        unsupported = []
        for k, v in raw.items():
            neutral = k in _HF_NEUTRAL and (v == _HF_NEUTRAL[k] or (_HF_NEUTRAL[k] is None and v in ([], {})))
            if k.startswith("_") or k in _HF_IGNORED or neutral:
                continue
            if k in ours:
                kept[k] = v
            else:
                unsupported.append(f"{k}={v!r}")
        if unsupported:
            msg = (f"{where}: setting(s) not supported by transferlab's generate: {', '.join(sorted(unsupported))}; "
                   "supported: " + ", ".join(sorted(ours)))
            if strict:
                raise ConfigError(msg)
            warnings.warn(msg + " (ignored)", stacklevel=2)
        if isinstance(kept.get("stop_strings"), str):
            kept["stop_strings"] = [kept["stop_strings"]]
        try:
            return cls(**kept).validate()
        except TypeError as e:  # pragma: no cover - every kept key is a field
            raise ConfigError(f"{where}: {e}") from None


def _DEFAULT_FIELDS() -> dict[str, Any]:
    return dataclasses.asdict(GenerationConfig())


#: transformers GenerationConfig fields that do not change which ids are generated
_HF_IGNORED = frozenset({
    "transformers_version", "bos_token_id", "output_attentions", "output_hidden_states", "output_logits",
    "cache_implementation", "cache_config", "return_legacy_cache", "compile_config", "disable_compile",
    "is_assistant", "num_assistant_tokens", "num_assistant_tokens_schedule", "assistant_confidence_threshold",
    "assistant_lookbehind", "target_lookbehind", "prompt_lookup_num_tokens", "max_matching_ngram_size",
    "assistant_early_exit", "low_memory", "token_healing", "generation_kwargs", "prefill_chunk_size",
})
#: transformers fields we do not implement, at the values where they do nothing
_HF_NEUTRAL = {
    "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "diversity_penalty": 0.0, "num_beam_groups": 1,
    "encoder_repetition_penalty": 1.0, "encoder_no_repeat_ngram_size": 0, "remove_invalid_values": False,
    "renormalize_logits": False, "exponential_decay_length_penalty": None, "suppress_tokens": None,
    "begin_suppress_tokens": None, "sequence_bias": None, "guidance_scale": None, "min_p": None,
    "penalty_alpha": None, "constraints": None, "force_words_ids": None, "forced_decoder_ids": None,
    "max_time": None, "dola_layers": None, "watermarking_config": None, "top_h": None, "top_n_sigma": None,
}

GENERATION_CONFIG_NAME = "generation_config.json"


def load_generation_config(folder: Any) -> GenerationConfig | None:
    """The ``generation_config.json`` of a model folder (ours or ``transformers``') as our
    settings, or None when there is none. Unsupported fields are dropped with a warning.

    Raises:
        CheckpointError: the file is not a JSON object or holds invalid settings.
    """
    import json
    from pathlib import Path

    from .errors import CheckpointError

    p = Path(folder) / GENERATION_CONFIG_NAME
    if not p.is_file():
        return None
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{p}: invalid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{p}: expected a JSON object, got {type(raw).__name__}")
    try:
        return GenerationConfig.from_hf(raw, strict=False, where=str(p))
    except ConfigError as e:
        msg = str(e).removeprefix("generate: ")
        raise CheckpointError(msg if msg.startswith(str(p)) else f"{p}: {msg}") from None


#: our settings that transformers' GenerationConfig does not have (left out of an export)
_OURS_ONLY = ("seed", "compile", "truncation")


def save_generation_config(gc: GenerationConfig | None, folder: Any, hf: bool = False) -> None:
    """Write the settings that differ from the defaults as ``generation_config.json`` (the
    ``transformers`` file name and field names), atomically; nothing when there are none.
    ``hf``: for a transformers directory, without our own settings (seed, compile, truncation)."""
    import json
    from pathlib import Path

    from .utils import atomic_write_text

    if gc is not None and not isinstance(gc, GenerationConfig):  # a transformers GenerationConfig
        gc = GenerationConfig.from_hf(gc, strict=False)
    fields = gc.set_fields() if gc is not None else {}
    if hf:
        fields = {k: v for k, v in fields.items() if k not in _OURS_ONLY}
    if fields:
        atomic_write_text(Path(folder) / GENERATION_CONFIG_NAME, json.dumps(fields, indent=2) + "\n")


@dataclass
class GenerateOutput:
    """What ``generate(..., return_dict_in_generate=True)`` returns."""

    sequences: torch.Tensor  # (B * num_return_sequences, L)
    scores: tuple[torch.Tensor, ...] | None = None  # per step (B', V) processed scores
    sequences_scores: torch.Tensor | None = None  # beams: length-penalised log-prob per sequence

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)


# ---------------------------------------------------------------------------------- streaming
class TextStreamer:
    """Print text as tokens arrive (like ``transformers.TextStreamer``); batch size 1.

    ``generate`` calls ``put(prompt_ids)`` once, then ``put(new_token_ids)`` per step, then
    ``end()``. The text printed so far is always ``tokenizer.decode(all tokens)``'s prefix: a
    trailing incomplete UTF-8 character (byte-level BPE splits them) is held back until complete.

    Args:
        tokenizer: anything with ``decode(ids, skip_special_tokens=...)``.
        skip_prompt: do not print the prompt.
        skip_special_tokens: passed to ``decode``.
        file: where to write (default stdout); flushed after each piece.
    """

    def __init__(self, tokenizer: Any, skip_prompt: bool = True, skip_special_tokens: bool = True,
                 file: TextIO | None = None) -> None:
        self.tokenizer, self.skip_prompt, self.skip_special = tokenizer, skip_prompt, skip_special_tokens
        self.file = file
        self._ids: list[int] = []
        self._printed = ""
        self._first = True

    def put(self, value: torch.Tensor) -> None:
        if value.dim() > 1 and value.shape[0] > 1:
            raise ConfigError("TextStreamer streams one sequence; got a batch of "
                              f"{value.shape[0]} (generate one prompt at a time to stream)")
        if self._first:
            self._first = False
            if self.skip_prompt:
                return
        self._ids.extend(int(t) for t in value.reshape(-1).tolist())
        self._emit(final=False)

    def end(self) -> None:
        self._emit(final=True)
        self._write("\n")

    def _emit(self, final: bool) -> None:
        text = self.tokenizer.decode(self._ids, skip_special_tokens=self.skip_special)
        if not final:
            text = text.rstrip("\ufffd")  # incomplete multi-byte character: wait for the rest
        if text.startswith(self._printed) and len(text) > len(self._printed):
            self._write(text[len(self._printed):])
            self._printed = text

    def _write(self, s: str) -> None:
        f = self.file or sys.stdout
        f.write(s)
        f.flush()


# ---------------------------------------------------------------------------------- filters
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
        out = self.backbone.encode(ids, mask)
        # the transformer families return (states, hidden states); the contract's value is the states
        return out[0] if isinstance(out, tuple) else out

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
        with torch.inference_mode(), _freezing(gc.compile):
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


# ---------------------------------------------------------------------------------- scoring
def token_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    decoder_input_ids: torch.Tensor | None = None,
    target_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Log-probability of each token given the ones before it (teacher forcing).

    For decoders ``out[:, t] = log p(input_ids[:, t] | input_ids[:, :t])`` (left or right
    padding; positions count real tokens only); for encoder-decoders the same over
    ``decoder_input_ids`` given the encoder input. ``out[:, 0]``, padded positions and the first
    real token of a left-padded row (nothing to predict it from) are 0.
    Only positions in ``target_mask`` go through the LM head, so long contexts with short
    targets (in-context scoring) never build a (B, T, V) tensor.

    Args:
        model: decoder or encoder-decoder TransferModel with an ``lm`` head.
        input_ids: (B, T) ids (decoders: the sequences to score; encoder-decoders: the source).
        attention_mask: (B, T) 1 = token; None = no padding.
        decoder_input_ids: (B, T_dec) encoder-decoders only: start token + target tokens.
        target_mask: (B, T_seq) which positions to score (default: every real token but the first).

    Returns:
        (B, T_seq) float32 log-probs, 0 where not scored.
    """
    lm = _LM(model)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            ids = input_ids.to(lm.device)
            mask = attention_mask.to(lm.device) if attention_mask is not None else None
            if lm.is_seq2seq:
                if decoder_input_ids is None:
                    raise ConfigError("token_logprobs: encoder-decoders need decoder_input_ids (start + targets)")
                memory = lm.encode(ids, mask)
                seq = decoder_input_ids.to(lm.device)
                h = lm.hidden(seq, None, None, None, memory, mask)  # (B, T_dec, C)
                real = torch.ones_like(seq, dtype=torch.bool)
            else:
                seq = ids
                pos = _positions(mask) if mask is not None else None
                h = lm.hidden(seq, mask, pos, None)  # (B, T, C)
                real = mask.bool() if mask is not None else torch.ones_like(seq, dtype=torch.bool)
            # a token is scored when it and the one before it are real: the first real token of a
            # (left-padded) row has no context to be predicted from
            want = torch.zeros_like(real)
            want[:, 1:] = real[:, 1:] & real[:, :-1]
            if target_mask is not None:
                want &= target_mask.to(lm.device).bool()
            b, t = want.nonzero(as_tuple=True)  # target positions; their predictors sit at t - 1
            logits = lm.head(h[b, t - 1]).float()  # (N, V)
            lp = logits.log_softmax(-1).gather(1, seq[b, t][:, None]).squeeze(1)  # (N,)
            out = torch.zeros(seq.shape, dtype=torch.float32, device=lm.device)
            out[b, t] = lp
    finally:
        model.train(was_training)
    return out


def generation_perplexity(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    sequences: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    eos_token_id: int | list[int] | None = None,
) -> torch.Tensor:
    """The model's perplexity on its own generated text, per sequence.

    ``exp(-mean log p(new token | everything before it))`` over the new tokens up to and
    including the first eos (padding after it is not scored). Low values mean the model finds
    its output predictable: greedy/beam output scores low by construction; sampled output is
    the more telling number (a well-trained model stays near its validation perplexity).

    Args:
        model: the model that generated (decoder or encoder-decoder).
        input_ids: (B, T) the prompts (decoders) / encoder inputs as given to ``generate``.
        sequences: what ``generate`` returned, one row per prompt (num_return_sequences=1).
        attention_mask: the prompts' mask as given to ``generate``.
        eos_token_id: end token(s); default the model config's.

    Returns:
        (B,) float32 perplexities (nan for a row with no new tokens).
    """
    cfg = model.config
    eos = torch.tensor(_as_ids(eos_token_id, cfg.eos_token_id) or [-1], device=sequences.device)
    seq2seq = bool(backbone_of(model).is_encoder_decoder)
    start = 1 if seq2seq else input_ids.shape[1]
    if sequences.shape[0] != input_ids.shape[0]:
        raise ConfigError(f"generation_perplexity: {sequences.shape[0]} sequences for {input_ids.shape[0]} prompts "
                          "(score one sequence per prompt)")
    new = sequences[:, start:]  # (B, N)
    is_eos = torch.isin(new, eos).long()
    valid = (is_eos.cumsum(1) - is_eos) == 0  # up to and including the first eos
    target = torch.zeros(sequences.shape, dtype=torch.bool, device=sequences.device)
    target[:, start:] = valid
    if seq2seq:
        lp = token_logprobs(model, input_ids, attention_mask, decoder_input_ids=sequences, target_mask=target)
    else:
        mask = None
        if attention_mask is not None:
            mask = torch.ones(sequences.shape, dtype=torch.long, device=sequences.device)
            mask[:, :start] = attention_mask.to(sequences.device)
        lp = token_logprobs(model, sequences, mask, target_mask=target)
    n = target.sum(1).clamp(min=1)
    ppl = torch.exp(-(lp.to(target.device) * target).sum(1) / n)
    return torch.where(target.any(1), ppl, torch.full_like(ppl, float("nan")))
