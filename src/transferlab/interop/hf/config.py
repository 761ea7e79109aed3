"""Config translation between transformers' ``config.json`` and our :class:`ModelConfig`, and the
registry of layouts (one per ``model_type``) that the architecture modules contribute.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any, Iterable

from ...config import Activation, Family, ModelConfig
from ...errors import CheckpointError, ConfigError
from . import bert, encoders, gpt2, llama, seq2seq
from .table import Layout, _canonical_heads, _num_labels

__all__ = ["LAYOUTS", "config_from_hf", "layout_for"]

log = logging.getLogger("transferlab.interop.hf")

# model_type -> layout; the order decides which of several fitting layouts an export takes
LAYOUTS: dict[str, Layout] = {**bert.LAYOUTS, **gpt2.LAYOUTS, **seq2seq.LAYOUTS, **llama.LAYOUTS, **encoders.LAYOUTS}


def config_from_hf(raw: dict[str, Any], keys: Iterable[str] = ()) -> tuple[ModelConfig, Layout, str]:
    """Our :class:`ModelConfig` for a transformers ``config.json`` (+ the checkpoint's key names).

    Args:
        raw: the transformers config as a dict (``model_type``, ``architectures``, sizes).
        keys: tensor names in the checkpoint (used to see a pooler, or an untied output matrix).

    Returns:
        ``(config, layout, architecture)``; ``config.heads`` follows the architecture.
    """
    mt = raw.get("model_type")
    if mt not in LAYOUTS:
        raise CheckpointError(f"config.json: model_type {mt!r} is not supported; supported: {', '.join(LAYOUTS)}")
    layout = LAYOUTS[mt]
    keys = set(keys)
    stripped = {k[len(layout.base):] if layout.base and k.startswith(layout.base) else k for k in keys}
    missing_field = [k for k in _required_fields(mt) if k not in raw]
    if missing_field:
        raise CheckpointError(f"config.json: model_type {mt!r} needs field(s) {', '.join(missing_field)}")
    cfg = layout.config_in(raw, stripped)
    _warn_special_ids_outside_vocab(cfg)
    archs = raw.get("architectures") or [next((a for k, a in layout.signatures if k in keys), layout.base_class)]
    arch = archs[0]
    if arch not in layout.archs:
        log.warning("%s is not a supported %s architecture (supported: %s); loading the base model only",
                    arch, mt, ", ".join(layout.archs))
        heads: dict[str, dict[str, Any]] = {}
    else:
        heads = json.loads(json.dumps(layout.archs[arch]))
    for name in heads:
        if name in ("classification", "token_classification"):
            heads[name] = {**heads[name], "num_labels": _num_labels(raw)}
        if heads[name].get("dense_act") == "$hidden_act":  # RoFormer's classifier uses the model's activation
            heads[name]["dense_act"] = str(Activation(cfg.activation))
    cls = heads.get("classification")
    if cls is not None and not cfg.pooler and not cls.get("dense_act") and cls.get("pooling") != "last":
        raise CheckpointError(f"config.json: {arch} needs pooler weights (pooler.dense.weight), none found")
    lm_untied = any(k in keys for k in ("lm_head.weight", "cls.predictions.decoder.weight", "lm_head.decoder.weight",
                                        *layout.tied))
    if "lm" in heads and lm_untied and raw.get("tie_word_embeddings") is False:
        cfg.tie_embeddings = False
    if mt == "bart" and "lm" in heads and "final_logits_bias" not in keys:
        cfg.lm_head_bias = False
    cfg.heads = heads
    return cfg.validate(), layout, arch


def _warn_special_ids_outside_vocab(cfg: ModelConfig) -> None:
    """Warn about special ids the vocabulary cannot hold; keep them (the round trip stays exact).

    transformers allows them (``GPT2Config(vocab_size=173)`` keeps eos/bos 50256) and so do
    we: ``generate`` never stops on an eos the model cannot produce and runs to the length
    limit, as transformers does; a pad id only matters once a sequence can finish.
    """
    bad = [f"{k}={getattr(cfg, k)}" for k in ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")
           if getattr(cfg, k) >= cfg.vocab_size]
    if bad:
        log.warning("config.json: %s outside the vocabulary (vocab_size=%d): kept as they are; generate will not "
                    "stop on an eos it cannot produce (it runs to the length limit, as transformers does)",
                    ", ".join(bad), cfg.vocab_size)


def _required_fields(mt: str) -> tuple[str, ...]:
    if LAYOUTS[mt].required:
        return LAYOUTS[mt].required
    return {"bert": ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"),
            "roberta": ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"),
            "gpt2": ("vocab_size", "n_embd", "n_layer", "n_head"),
            "bart": ("vocab_size", "d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads", "encoder_ffn_dim"),
            "t5": ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads")}[mt]


def _override(cfg: ModelConfig, overrides: dict[str, Any]) -> ModelConfig:
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    bad = sorted(set(overrides) - known)
    if bad:
        raise ConfigError(f"unknown model field(s) {', '.join(bad)}; known: {', '.join(sorted(known))}")
    return dataclasses.replace(cfg, **overrides).validate()



_MAJOR_SWITCHES = {"norm", "position", "activation", "prenorm", "embedding_norm", "final_norm", "bias"}


def layout_for(cfg: ModelConfig) -> Layout:
    """The transformers layout that represents ``cfg`` exactly, or a ConfigError naming the fields
    that rule out the closest one."""
    best: tuple[int, str, list[str]] | None = None
    for mt, layout in LAYOUTS.items():
        if not layout.exportable:
            continue
        bad = _mismatches(cfg, layout.requires)
        if not bad:
            return layout
        # closeness: a different kind of norm, position, MLP or residual order weighs more than a
        # constant (a rotary encoder with another base is nearer RoFormer than BERT)
        score = sum(10 if b.split("=")[0].split(" ")[0] in _MAJOR_SWITCHES else 1 for b in bad)
        if Family(cfg.family) == layout.requires["family"] and (best is None or score < best[0]):
            best = (score, mt, bad)
    if best is None:
        raise ConfigError(f"no transformers layout for family {cfg.family}")
    raise ConfigError(f"this model has no transformers equivalent; as {best[1]} it would need "
                      + ", ".join(best[2]))


def _mismatches(cfg: ModelConfig, req: dict[str, Any]) -> list[str]:
    bad = []
    for f, want in req.items():
        have = getattr(cfg, f)
        if f == "d_head":
            ok = have in (0, cfg.d_model // cfg.n_heads) and cfg.d_model % cfg.n_heads == 0
            text = "d_head=0 (d_model // n_heads)"
        elif isinstance(want, tuple) and len(want) == 1 and isinstance(want[0], str):
            other = want[0]
            if other == "pad_token_id + 1":
                ok, text = have == cfg.pad_token_id + 1, f"{f}=pad_token_id + 1 = {cfg.pad_token_id + 1}"
            else:
                ok, text = have == getattr(cfg, other), f"{f}={other} ({getattr(cfg, other)})"
        elif isinstance(want, tuple):
            ok, text = have in want, f"{f} in ({', '.join(str(w) for w in want)})"
        else:
            ok, text = have == want, f"{f}={want}"
        if not ok:
            bad.append(f"{text}, got {have}")
    return bad


def _arch_for(cfg: ModelConfig, layout: Layout) -> str:
    kinds = sorted(_canonical_heads(cfg).values())
    for arch, heads in layout.archs.items():
        if sorted(heads) == kinds:
            return arch
    raise ConfigError(f"heads {kinds or '{}'} have no {layout.model_type} architecture in transformers; "
                      "supported: " + "; ".join(f"{a} = {sorted(h) or '{}'}" for a, h in layout.archs.items()))


