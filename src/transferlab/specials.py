"""Special token ids, resolved once from a model config and/or a tokenizer, by one rule.

The rule (each id: the first that exists, ids < 0 in a config meaning "none"):

* an id the caller passes explicitly (a ``GenerationConfig`` value, an objective's setting);
* **pad**: the tokenizer's pad, else the config's pad, else eos (as resolved below), else 0.
  Padding is masked out, so any in-vocabulary id is correct; eos is the usual stand-in for
  tokenizers without one (GPT-2, LLaMA) and 0 the last resort.
* **eos**: the tokenizer's eos, else its [SEP] (a BERT vocabulary ends sequences with it), else
  the config's eos; None when there is none (generation then runs to its length limit).
* **bos**: the tokenizer's bos, else its [CLS], else the config's bos; None when there is none.
* **decoder_start** (encoder-decoders): the config's ``decoder_start_token_id``, else pad for
  T5-style models (a unigram tokenizer, or relative positions), else eos (BART), else bos,
  else pad.
* **mask / cls / sep / unk**: the tokenizer's; None without a tokenizer (a config has none).

The tokenizer comes first because it is the one that produced the ids; when both are given
they agree on pad/bos/eos anyway (:func:`~transferlab.checks.check_tokenizer` refuses a
tokenizer whose special ids differ from those the model was built with). Without a tokenizer the
config is the whole answer, which is what generation from a bare model sees.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["SpecialIds"]


def _id(v: Any) -> int | None:
    """A token id or None: None, negatives (a config's "none") and lists of nothing are None."""
    if isinstance(v, (list, tuple)):
        v = v[0] if v else None
    return None if v is None or int(v) < 0 else int(v)


def _first(*vals: Any) -> int | None:
    for v in vals:
        i = _id(v)
        if i is not None:
            return i
    return None


@dataclass(frozen=True)
class SpecialIds:
    """The special token ids of one model (+ tokenizer), each None when there is none (pad never)."""

    pad: int
    bos: int | None = None
    eos: int | None = None
    decoder_start: int | None = None  #: first decoder input of an encoder-decoder (None for others)
    mask: int | None = None
    cls: int | None = None
    sep: int | None = None
    unk: int | None = None

    @classmethod
    def resolve(cls, config: Any = None, tokenizer: Any = None, *, pad: int | None = None,
                eos: int | None = None, bos: int | None = None, decoder_start: int | None = None) -> SpecialIds:
        """Every special id by the module's rule.

        Args:
            config: a :class:`~transferlab.config.ModelConfig` (or None).
            tokenizer: a :class:`~transferlab.tokenizer.Tokenizer` or anything with the same
                ``*_token_id`` attributes (or None).
            pad: an explicit pad id that wins over both (e.g. ``GenerationConfig.pad_token_id``).
            eos: an explicit eos id.
            bos: an explicit bos id.
            decoder_start: an explicit decoder start id (an objective's collator start).

        Returns:
            The resolved ids.
        """
        def tok(name: str) -> Any:
            return getattr(tokenizer, name, None) if tokenizer is not None else None

        def conf(name: str) -> Any:
            return getattr(config, name, None) if config is not None else None

        eos_id = _first(eos, tok("eos_token_id"), tok("sep_token_id"), conf("eos_token_id"))
        bos_id = _first(bos, tok("bos_token_id"), tok("cls_token_id"), conf("bos_token_id"))
        pad_id = _first(pad, tok("pad_token_id"), conf("pad_token_id"), eos_id)
        pad_id = 0 if pad_id is None else pad_id
        start = None
        if config is None or _is_encoder_decoder(config):
            t5_style = tok("kind") == "unigram" or _is_relative(config)
            start = _first(decoder_start, conf("decoder_start_token_id"), pad_id if t5_style else None,
                           eos_id, bos_id, pad_id)
        return cls(pad=pad_id, bos=bos_id, eos=eos_id, decoder_start=start, mask=_id(tok("mask_token_id")),
                   cls=_id(tok("cls_token_id")), sep=_id(tok("sep_token_id")), unk=_id(tok("unk_token_id")))

    def config_fields(self) -> dict[str, int]:
        """The ids as :class:`~transferlab.config.ModelConfig` fields (-1 for none).

        Returns:
            ``pad_token_id``, ``bos_token_id``, ``eos_token_id`` and, for encoder-decoders,
            ``decoder_start_token_id``.
        """
        out = {"pad_token_id": self.pad, "bos_token_id": -1 if self.bos is None else self.bos,
               "eos_token_id": -1 if self.eos is None else self.eos}
        if self.decoder_start is not None:
            out["decoder_start_token_id"] = self.decoder_start
        return out


def _is_encoder_decoder(config: Any) -> bool:
    from .config import Family

    return str(getattr(config, "family", "")) == Family.ENCODER_DECODER.value


def _is_relative(config: Any) -> bool:
    from .config import Position

    return config is not None and str(getattr(config, "position", "")) == Position.RELATIVE.value
