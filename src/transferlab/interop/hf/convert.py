"""Import and export of whole models: transformers tensors <-> ours, by the layouts' tables.

Reading files is :mod:`.weights`, config translation :mod:`.config`, the tables one module per
architecture family; this module applies a table to a state dict in either direction.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import torch

from ...config import Family, ModelConfig
from ...errors import CheckpointError, ConfigError
from ...hub import resolve_builtin
from ...models.model import TransferModel
from .. import labels as _labels
from .. import sentence_transformers as _st
from ..tokenizer_files import export_tokenizer
from .config import LAYOUTS, _arch_for, _mismatches, _override, config_from_hf, layout_for
from .table import Layout, _canon_key, _canonical_heads, _compile, _hf_names, _op_in, _op_out
from .weights import _normalise_keys, read_source

__all__ = ["state_from_hf", "from_hf", "export_target", "to_hf_state", "export_hf"]

log = logging.getLogger("transferlab.interop.hf")


def state_from_hf(hf_state: dict[str, torch.Tensor], cfg: ModelConfig, layout: Layout,
                  expected: dict[str, torch.Tensor], where: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Our state dict from a transformers one, with shapes checked against ``expected``.

    Args:
        hf_state: transformers tensors (with or without the base-model prefix).
        cfg: our config (from :func:`config_from_hf`).
        layout: the model_type's layout.
        expected: our model's ``state_dict()`` (only names and shapes are used).
        where: file name for error messages.

    Returns:
        Tensors under our names; raises :class:`CheckpointError` naming missing or misshaped keys.
    """
    hf_state = _normalise_keys(hf_state)
    prefixed = bool(layout.base) and any(k.startswith(layout.base) for k in hf_state)
    rows, kinds = layout.rows(cfg), _canonical_heads(cfg)
    used: set[str] = set()
    out: dict[str, torch.Tensor] = {}
    problems: list[str] = []

    def full_name(name: str) -> str:
        return name[1:] if name.startswith("/") else (layout.base + name if prefixed else name)

    def fetch(name: str) -> tuple[str, torch.Tensor | None]:
        for n in (name, *layout.aliases.get(name, ())):  # e.g. BART files with only encoder.embed_tokens
            if full_name(n) in hf_state:
                return full_name(n), hf_state[full_name(n)]
        return full_name(name), None

    for key, want in expected.items():
        found = _hf_names(rows, _canon_key(key, kinds))
        if found is None:
            raise CheckpointError(f"{where}: internal: no {layout.model_type} counterpart for {key}")
        names, op = found
        tensors, fulls = [], []
        for n in names:
            full, t = fetch(n)
            fulls.append(full)
            tensors.append(t)
        absent = [f for f, t in zip(fulls, tensors) if t is None]
        if absent:
            ck = _canon_key(key, kinds)
            if (key == "heads.lm.bias" and layout.model_type == "bart") or any(
                    _compile(z).match(ck) for z in layout.zero_if_absent):
                out[key] = torch.zeros_like(want, device=want.device)
                continue
            problems.append(f"missing {', '.join(absent)}")
            continue
        used.update(fulls)
        t = _op_in(op, tensors, cfg)
        if tuple(t.shape) != tuple(want.shape):
            src = " + ".join(f"{f} {tuple(x.shape)}" for f, x in zip(fulls, tensors))
            problems.append(f"{src} does not fit config.json (expects {tuple(want.shape)} for {key})")
            continue
        out[key] = t.contiguous()
    if problems:
        more = f" (and {len(problems) - 4} more)" if len(problems) > 4 else ""
        raise CheckpointError(f"{where}: tensors do not match config.json: " + "; ".join(problems[:4]) + more)
    # weights tied to the embeddings appear under several names; everything else unused is reported
    tied = {"lm_head.weight", "cls.predictions.decoder.weight", "lm_head.decoder.weight", *layout.tied}
    unused = sorted(k for k in hf_state if k not in used and k not in tied
                    and not any(re.match(p, k[len(layout.base):] if prefixed and k.startswith(layout.base) else k)
                                for p in layout.ignore))
    if unused:
        log.warning("%s: %d tensor(s) not used by the %s model: %s", where, len(unused),
                    layout.model_type, ", ".join(unused[:6]) + (" ..." if len(unused) > 6 else ""))
    return out


def from_hf(src: Any, config: Any = None, meta: bool = False, **overrides: Any):
    """Load a transformers checkpoint into a :class:`~transferlab.models.TransferModel`.

    Args:
        src: a directory written by transformers (``config.json`` + ``model.safetensors``),
            ``"builtin:minilm"``, a transformers model object, a ``(state_dict, config)`` pair, or
            a state dict (with ``config``).
        config: the transformers config (object or dict) when ``src`` is a state dict.
        meta: build on the meta device and only check names/shapes (nothing is read or allocated).
        **overrides: our config fields to change before building (e.g. ``dropout=0.0``); sizes
            must still fit the weights.

    Returns:
        The model, in eval mode like transformers' ``from_pretrained`` (call ``.train()`` to train).
    """
    raw, hf_state, where = read_source(src, config, meta=meta)
    try:
        cfg, layout, arch = config_from_hf(raw, hf_state.keys())
    except (TypeError, ValueError) as e:  # e.g. "num_attention_heads": "four", or a list for a number
        raise CheckpointError(f"config.json: a {raw.get('model_type')} field has the wrong type or value ({e})") from None
    if overrides:
        cfg = _override(cfg, overrides)
    if meta:
        with torch.device("meta"):
            model = TransferModel(cfg)
    else:
        model = TransferModel(cfg)
    state = state_from_hf(hf_state, cfg, layout, model.state_dict(), where)
    model.load_state_dict(state, strict=True, assign=meta)
    model.hf_source = {"model_type": layout.model_type, "architecture": arch}
    if isinstance(src, (str, Path)):  # its generation_config.json: the defaults of model.generate
        from ...generation import load_generation_config

        model.generation_config = load_generation_config(resolve_builtin(src))
        # export_hf carries its tokenizer, labels and modules along
        model.hf_source["dir"] = str(resolve_builtin(src))
    return model.eval()


def check_transformer_family(family: Any, where: str = "") -> None:
    """ConfigError unless ``family`` is a transformer family (encoder, decoder, encoder-decoder):
    a registered family (an LSTM, word vectors) has no ``transformers`` class to export to.

    Args:
        family: ``ModelConfig.family`` (a Family or a registered name).
        where: the model folder, named first in the message (or empty).
    """
    name = str(family)
    if name not in Family._value2member_map_:
        raise ConfigError(f"{where + ': ' if where else ''}family {name!r} has no transformers class (--to-hf "
                          "exports the transformer families encoder, decoder and encoder-decoder); use the folder "
                          "with transferlab")


def export_target(model) -> tuple[Layout, str]:
    """The (layout, transformers class) that represents ``model`` exactly.

    Several layouts may fit one backbone (a BERT-like encoder is a BERT, an ELECTRA or, without
    segments, a DistilBERT); the heads decide: the first layout (in ``LAYOUTS`` order) with a
    class for these heads whose ``export_check`` passes wins. Otherwise the first refusal is
    raised: it names the closest class and what rules it out.
    """
    cfg: ModelConfig = model.config
    check_transformer_family(cfg.family)
    fits = [lay for lay in LAYOUTS.values() if lay.exportable and not _mismatches(cfg, lay.requires)]
    if not fits:
        layout_for(cfg)  # raises, naming the closest layout and its mismatching fields
    kinds = sorted(_canonical_heads(cfg).values())
    refusals: list[ConfigError] = []
    for layout in fits:
        for arch, heads in layout.archs.items():
            if sorted(heads) != kinds:
                continue
            try:
                (layout.export_check or _pooler_classifier_check)(model, layout, arch)
            except ConfigError as e:
                refusals.append(e)
                continue
            return layout, arch
    if refusals:
        raise refusals[0]
    _arch_for(cfg, fits[0])  # raises: no class of the closest layout has these heads
    raise AssertionError("unreachable")


def _pooler_classifier_check(model, layout: Layout, arch: str) -> None:
    """BERT-style sequence classification: a linear layer on the tanh [CLS] pooler output."""
    cfg: ModelConfig = model.config
    for name, kind in _canonical_heads(cfg).items():
        if kind != "classification":
            continue
        head = model.heads[name]
        pooling = getattr(head, "pooling", "auto")
        if pooling == "mean":
            raise ConfigError(f"a mean-pooled classifier has no transformers class: {arch} classifies the [CLS] "
                              "pooler output; fine-tune with --pooling cls, or export the encoder without the head "
                              "and mean-pool with sentence-transformers (docs/models.md)")
        if not cfg.pooler or pooling not in ("auto", "cls") or getattr(head, "dense_act", None):
            raise ConfigError(f"{arch} classifies the pooler output: needs pooler=true and pooling auto/cls (without "
                              "a pooler, transformers' first-token classifiers need the head's dense_act: gelu for "
                              "ELECTRA, relu for DistilBERT without segments)")


def to_hf_state(model) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The transformers config dict and state dict for one of our models.

    Args:
        model: a :class:`~transferlab.models.TransferModel` whose config fits a layout
            (see :func:`layout_for`) and whose heads match one transformers class.

    Returns:
        ``(hf_config, state)``: ``hf_config`` has ``architectures`` and ``model_type``; tied
        output matrices are left out (transformers ties them on load).
    """
    cfg: ModelConfig = model.config
    layout, arch = export_target(model)
    kinds = _canonical_heads(cfg)
    if "lm" in kinds.values() and layout.model_type in ("bert", "roberta") and not cfg.lm_head_transform:
        raise ConfigError(f"{layout.model_type} MLM heads have a dense+norm transform; set lm_head_transform=true")
    hf_cfg = {"architectures": [arch], "model_type": layout.model_type, **layout.config_out(cfg)}
    for name, kind in kinds.items():
        if kind in ("classification", "token_classification"):
            n = model.heads[name].num_labels
            hf_cfg["id2label"] = {str(i): f"LABEL_{i}" for i in range(n)}
            hf_cfg["label2id"] = {f"LABEL_{i}": i for i in range(n)}
            if n == 1:
                hf_cfg["problem_type"] = "regression"
    prefix = "" if arch == layout.base_class else layout.base
    rows = layout.rows(cfg)
    state: dict[str, torch.Tensor] = {}
    for key, t in model.state_dict().items():
        if key.startswith("backbone.pooler.") and arch in layout.no_pooler:
            continue  # e.g. BertForMaskedLM is built without a pooler
        found = _hf_names(rows, _canon_key(key, kinds))
        if found is None:
            raise ConfigError(f"{key} has no {layout.model_type} counterpart")
        names, op = found
        parts = _op_out(op, t.detach().cpu(), len(names), cfg)
        for n, part in zip(names, parts):
            full = n[1:] if n.startswith("/") else prefix + n
            state[full] = part.contiguous().clone()
    # tensors the transformers layout always has but our config may leave out: zeros are equal
    if layout.model_type in ("bert", "roberta"):
        if not cfg.type_vocab_size:
            state[prefix + "embeddings.token_type_embeddings.weight"] = torch.zeros(1, cfg.d_model)
        lm = "cls.predictions." if layout.model_type == "bert" else "lm_head."
        if "lm" in kinds.values():
            bias = state.get(lm + "decoder.bias", torch.zeros(cfg.vocab_size))
            state[lm + "decoder.bias"], state[lm + "bias"] = bias, bias.clone()
    if layout.model_type == "bart" and "lm" in kinds.values() and "final_logits_bias" not in state:
        state["final_logits_bias"] = torch.zeros(1, cfg.vocab_size)
    if layout.finish_out is not None:
        layout.finish_out(model, arch, state, prefix)
    return hf_cfg, state


def export_hf(model, save_directory: str | Path, tokenizer_from: str | Path | None = None,
              labels: list[str] | None = None, sentence_transformers: bool | None = None) -> Path:
    """Write a directory that ``transformers`` ``AutoModel*.from_pretrained`` loads unchanged.

    Args:
        model: a :class:`~transferlab.models.TransferModel` (see :func:`to_hf_state`).
        save_directory: output folder; replaced atomically.
        tokenizer_from: optional folder (usually the model's own; default: the transformers
            folder the model was loaded from, if any) whose tokenizer is re-saved
            with this model's metadata (class, ``model_input_names``, ``model_max_length``: see
            :meth:`~transferlab.tokenizer.Tokenizer.save`), whose label names (``config.json``
            ``id2label`` or ``task.json``) name the classes, and whose sentence-transformers
            files (``modules.json``, ``1_Pooling/``, ...) are copied.
        labels: class names (index = logit); default: ``model.id2label`` if set, else from
            ``tokenizer_from``. Without names transformers shows ``LABEL_0`` ...
        sentence_transformers: write a mean-pooling sentence-transformers config when
            ``tokenizer_from`` has none. Default: for plain encoders (no heads, or MLM only).

    Returns:
        The directory written (``config.json`` with ``architectures`` + ``model_type``,
        ``model.safetensors``, tokenizer files).
    """
    from safetensors.torch import save_file

    from ...utils import atomic_dir, atomic_write_text

    hf_cfg, state = to_hf_state(model)
    cfg: ModelConfig = model.config
    kinds = _canonical_heads(cfg)
    if tokenizer_from is None:  # a model loaded from a transformers folder: that folder
        tokenizer_from = (getattr(model, "hf_source", None) or {}).get("dir")
    if labels is None:
        own = getattr(model, "id2label", None)
        labels = [own[k] for k in sorted(own, key=int)] if isinstance(own, dict) and own else _labels.labels_of(tokenizer_from)
    n = [model.heads[h].num_labels for h, k in kinds.items() if k in _labels.LABEL_HEADS]
    if labels and n and len(labels) == n[0] and n[0] > 1:
        hf_cfg.update(_labels.label_config(labels))
    elif labels and n:
        log.warning("%d label names for %d outputs: exporting LABEL_0 ... instead", len(labels), n[0])
    if sentence_transformers is None:
        sentence_transformers = Family(cfg.family) == Family.ENCODER and set(kinds.values()) <= {"lm"}
    out = Path(save_directory)
    with atomic_dir(out) as tmp:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        atomic_write_text(tmp / "config.json", json.dumps(hf_cfg, indent=2) + "\n")
        from ...generation import save_generation_config  # the model's generate defaults, if any

        save_generation_config(getattr(model, "generation_config", None), tmp, hf=True)
        st = []
        if tokenizer_from is not None:
            uses_types = Family(cfg.family) == Family.ENCODER and cfg.type_vocab_size > 0
            export_tokenizer(tokenizer_from, tmp, hf_cfg["model_type"], cfg.max_positions, uses_types)
            st = _st.copy_sentence_transformers(tokenizer_from, tmp)
        if not st and sentence_transformers:
            _st.write_sentence_transformers(tmp, cfg.d_model, cfg.max_positions)
    return out


