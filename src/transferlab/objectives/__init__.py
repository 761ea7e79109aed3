"""Pre-training objectives: each is a dataset view + a collator + a loss (see :mod:`.base`).

``build_objective(name, tokenizer, **settings)`` builds one by name:

======================  =========================================================  ==============
name                    what                                                       model
======================  =========================================================  ==============
``mlm``                 BERT/RoBERTa masked LM (+ whole-word, SpanBERT spans)      encoder, lm
``nsp`` (``mlm+nsp``)   BERT: masked LM + next-sentence prediction                 encoder, lm+nsp
``electra``             replaced-token detection with a small MLM generator        encoder, rtd
``clm``                 GPT next-token prediction on packed windows                decoder, lm
``denoise``             BART: composable noise, decoder reconstructs the original  enc-dec, lm
``span-corruption``     T5 span corruption with sentinels                          enc-dec, lm
``plm``                 XLNet permuted LM (two-stream, BART's variant: 1/6 pred.)  encoder, lm
``mtlm``                UniLM multitask masked LM (l2r/r2l/bidir./seq2seq masks)   encoder, lm
``mass``                MASS masked seq2seq: decoder predicts a 50% fragment       enc-dec, lm
``bilm``                ELMo biLM: forward + backward LSTM LMs, one shared softmax elmo, lm
``skipgram``            word2vec skip-gram (or ``mode=cbow``), negative sampling   word2vec
======================  =========================================================  ==============
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from .base import LossOutput, Objective, ObjectiveModule, TokenizerIds
from .clm import CLM, CLMConfig
from .mlm import MLM, MLMConfig

_REGISTRY: dict[str, tuple[str, str]] = {
    # name: (module, class)
    "mlm": ("mlm", "MLM"),
    "nsp": ("nsp", "MLMNSP"),
    "electra": ("electra", "Electra"),
    "clm": ("clm", "CLM"),
    "denoise": ("denoise", "Denoise"),
    "span-corruption": ("span_corruption", "SpanCorruption"),
    "plm": ("plm", "PermutedLM"),
    "mtlm": ("mtlm", "MultitaskMLM"),
    "mass": ("mass", "MaskedSeq2Seq"),
    "bilm": ("bilm", "BiLM"),
    "skipgram": ("skipgram", "SkipGram"),
}
_ALIASES = {"mlm+nsp": "nsp", "span_corruption": "span-corruption", "permuted-lm": "plm", "unilm": "mtlm",
            "masked-seq2seq": "mass"}


def objective_names(aliases: bool = False) -> list[str]:
    """The objective names ``build_objective`` accepts (with ``aliases``: also the aliases)."""
    return list(_REGISTRY) + (list(_ALIASES) if aliases else [])


def objective_class(name: str) -> type:
    """The class implementing objective ``name`` (an alias is resolved)."""
    import importlib

    key = _ALIASES.get(name, name)
    if key not in _REGISTRY:
        raise ConfigError(
            f"unknown objective {name!r}; known objectives: {', '.join(objective_names())} "
            f"(aliases: {', '.join(f'{a}={b}' for a, b in _ALIASES.items())})"
        )
    mod, cls = _REGISTRY[key]
    return getattr(importlib.import_module(f"{__name__}.{mod}"), cls)


def build_objective(name: str, tokenizer: Any, **settings: Any) -> Any:
    """Build objective ``name`` for ``tokenizer`` (a Tokenizer or :class:`TokenizerIds`).

    Args:
        name: one of :func:`objective_names` or an alias (``mlm+nsp``).
        tokenizer: supplies the special ids (pad, mask, cls/sep, bos/eos, sentinels).
        settings: fields of the objective's config dataclass (e.g. ``mask_prob=0.2``,
            ``whole_word=True``, ``noise=["infill", "permute"]``); strings are coerced.

    Returns:
        The objective (``check_model``, ``dataset``, ``collate``, ``loss``, ``wrap_model``, ...).
    """
    return objective_class(name)(tokenizer, **settings)


__all__ = [
    "CLM", "CLMConfig", "LossOutput", "MLM", "MLMConfig", "Objective", "ObjectiveModule",
    "TokenizerIds", "build_objective", "objective_class", "objective_names",
]
