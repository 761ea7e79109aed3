"""Decoding settings: :class:`GenerationConfig` (``transformers``' names and defaults, layered as
``transformers`` layers them) and the ``generation_config.json`` beside a model's weights."""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError


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

    from ..errors import CheckpointError

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

    from ..utils import atomic_write_text

    if gc is not None and not isinstance(gc, GenerationConfig):  # a transformers GenerationConfig
        gc = GenerationConfig.from_hf(gc, strict=False)
    fields = gc.set_fields() if gc is not None else {}
    if hf:
        fields = {k: v for k, v in fields.items() if k not in _OURS_ONLY}
    if fields:
        atomic_write_text(Path(folder) / GENERATION_CONFIG_NAME, json.dumps(fields, indent=2) + "\n")
