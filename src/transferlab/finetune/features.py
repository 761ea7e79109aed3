"""Frozen features from a pre-trained model: any layer, a learned scalar mix, probes, neighbours.

* :func:`extract_features` — per-token or pooled vectors (``cls``, ``mean``, ``last``) from one
  layer (``0`` = the embedding output, ``L`` = the last block, negatives count from the end), from
  all layers at once (``"all"``), or from a :class:`ScalarMix` over all layers (``"mix"``).
  Encoder-decoders give their encoder's states; decoders are read causally (use ``mean`` or
  ``last`` pooling: a decoder's first token has seen nothing).
* :class:`ScalarMix` — ELMo's ``gamma * sum_l softmax(w)_l h_l`` (Peters et al., 2018, eq. 1).
* :class:`FeaturesConfig` — every setting of extraction and of the two tools, one typed
  dataclass (the ``features:`` section of ``transferlab features --config``).
* :mod:`~transferlab.finetune.probes` — linear probes per layer and on a learned scalar mix
  (``probe``), and contextual nearest neighbours of a word (``neighbours``).

All extraction runs under ``torch.inference_mode`` with the model in eval mode (no dropout), in
batches sorted by length so little time is spent on padding.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import COUNT, NONNEG_INT, Range, check_fields
from ..errors import ConfigError, DataError
from ..runtime import DTYPES, resolve_dtype
from ..specials import SpecialIds

POOLINGS = ("cls", "mean", "last", "none")

#: the "play" example: one sentence per sense (games, music, theatre, sport, a part in events)
PLAY_EXAMPLES = (
    "The children went outside to play in the garden after lunch.",
    "She learned to play the piano and the violin as a child.",
    "The play opened on Broadway and the critics loved the second act.",
    "He will play for the national team in the match against France next week.",
    "Luck seems to play a big part in who wins the election.",
)


# ------------------------------------------------------------------------------ settings
@dataclass
class FeaturesConfig:
    """Settings of frozen-feature extraction and of the probe / neighbours tools.

    ``transferlab features`` reads them from the flags, the ``features:`` section of ``--config``
    and ``features.KEY=VALUE`` overrides (the grammar of ``finetune``); the library functions
    take one (``config=``) and/or its fields as keywords.
    """

    model: str | None = None
    """Pre-trained model folder (with its tokenizer) or ``builtin:minilm`` (the command's)."""
    input: str | None = None
    """Texts to encode: a .txt file (one per line), .jsonl or .csv (see ``text_column``)."""
    task: str | None = None
    """A built-in task whose ``split`` texts to encode (probe: its classification task)."""
    split: str = "train"
    """Task split: train, validation or test."""
    text_column: str = "text"
    """JSONL field / CSV column of the text."""
    layer: str = "-1"
    """Hidden state: 0 = embeddings, 1..L = blocks, negatives from the end; ``mix`` = scalar mix of all
    layers (uniform, or ``mix_weights``); ``all`` = every layer stacked."""
    pooling: str = "mean"
    """cls: first token; mean: over real tokens; last: last real token; none: per-token vectors,
    zero-padded, with an attention mask."""
    mix_weights: str | None = None
    """A scalar mix saved by ``features probe --save-mix`` (with ``layer: mix``)."""
    normalize: bool = False
    """L2-normalise each pooled vector (unit length, as sentence-transformers' Normalize: dot products
    are then cosine similarities); needs a pooling other than none."""
    output: str | None = None
    """Where the command writes: NAME.npy or NAME.safetensors."""
    limit: int | None = None
    """Encode only the first N texts."""
    max_length: int = 256
    """Truncation length in tokens (special tokens included)."""
    batch_size: int = 32
    """Inputs per forward pass."""
    device: str = "cpu"
    """auto, cpu, cuda, cuda:N or mps."""
    dtype: str = "fp32"
    """``auto``, ``bf16``, ``fp16`` or ``fp32`` autocast (results are float32 either way); bf16 is ~4x
    faster on CPUs with avx512_bf16."""
    progress: bool = False
    """Show tqdm bars."""
    train_size: int | None = 1000
    """probe: labelled training examples (a seeded subsample; None = all)."""
    seed: int = 0
    """probe / neighbours: subsample, initialisation and sampling seed."""
    c_grid: list[float] = field(default_factory=lambda: [1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0])
    """probe: inverse regularisation strengths tried."""
    eval_on_test: bool = True
    """probe: also score the test split."""
    mix_epochs: int = 300
    """probe: full-batch steps of the scalar-mix training (per weight decay)."""
    n_sentences: int = 2000
    """neighbours: corpus sentences containing the word to sample."""
    k: int = 5
    """neighbours: neighbours per query (and static neighbours)."""

    #: allowed values of the numeric fields
    RANGES: ClassVar[dict[str, Range]] = {
        "limit": COUNT, "max_length": COUNT, "batch_size": COUNT, "train_size": COUNT, "seed": NONNEG_INT,
        "mix_epochs": COUNT, "n_sentences": COUNT, "k": COUNT,
    }

    def validate(self) -> "FeaturesConfig":
        """Check the settings; raise :class:`ConfigError` naming the field."""
        if isinstance(self.layer, (int, np.integer)) and not isinstance(self.layer, bool):
            self.layer = str(int(self.layer))  # the API takes layer numbers, files and flags strings
        check_fields(self, "features", self.RANGES)
        if self.pooling not in POOLINGS:
            raise ConfigError(f"pooling {self.pooling!r}: expected one of {', '.join(POOLINGS)}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype {self.dtype!r}: expected {', '.join(DTYPES)}")
        if self.layer not in ("mix", "all") and not re.fullmatch(r"-?\d+", self.layer):
            raise ConfigError(f"layer {self.layer!r}: expected an integer, 'all' or 'mix'")
        if self.split not in ("train", "validation", "test"):
            raise ConfigError(f"features.split: expected train, validation or test, got {self.split!r}")
        return self

    def replace(self, **settings: Any) -> "FeaturesConfig":
        """A validated copy with ``settings`` (field names) changed.

        Raises:
            ConfigError: an unknown setting (the message lists the known ones).
        """
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ConfigError(f"unknown features setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return dataclasses.replace(self, **settings).validate()


def features_config(config: FeaturesConfig | None = None, **settings: Any) -> FeaturesConfig:
    """``config`` (default: a fresh :class:`FeaturesConfig`) with ``settings`` applied, validated."""
    return (config if config is not None else FeaturesConfig()).replace(**settings)


# ------------------------------------------------------------------------------ scalar mix
class ScalarMix(nn.Module):
    """ELMo scalar mix: ``gamma * sum_l softmax(w)_l * h_l`` over the L+1 hidden states.

    The softmax keeps the layer weights positive and summing to one, so they read as "how much of
    each layer"; ``gamma`` rescales the mixed vector to suit the task (ELMo eq. 1). Weights start
    at zero, i.e. a uniform average of the layers.

    Args:
        n_layers: number of layers mixed (embeddings + blocks, i.e. ``len(hidden_states)``).
        layer_norm: normalise each layer's vectors (over the feature dimension, no learned
            affine) before mixing, so layers of very different scale (the residual stream of a
            pre-norm stack grows with depth) compete on equal terms. Off in ELMo's default.
        initial_weights: optional unnormalised starting weights (length ``n_layers``).
        trainable: whether ``w`` and ``gamma`` receive gradients.
    """

    def __init__(
        self,
        n_layers: int,
        layer_norm: bool = False,
        initial_weights: Sequence[float] | None = None,
        trainable: bool = True,
    ) -> None:
        super().__init__()
        if n_layers < 1:
            raise ConfigError(f"ScalarMix needs at least one layer, got {n_layers}")
        w = torch.zeros(n_layers) if initial_weights is None else torch.tensor(list(initial_weights), dtype=torch.float32)
        if w.numel() != n_layers:
            raise ConfigError(f"ScalarMix: {w.numel()} initial weights for {n_layers} layers")
        self.n_layers = n_layers
        self.layer_norm = layer_norm
        self.scalar_parameters = nn.Parameter(w, requires_grad=trainable)
        self.gamma = nn.Parameter(torch.ones(()), requires_grad=trainable)

    @property
    def weights(self) -> torch.Tensor:
        """The normalised layer weights ``softmax(w)`` (L,), summing to 1."""
        return torch.softmax(self.scalar_parameters, dim=0)

    def forward(self, layers: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """Mix layers.

        Args:
            layers: a sequence of L tensors of the same shape ``(..., C)``, or one tensor with the
                layer axis first ``(L, ..., C)``.

        Returns:
            The mixed tensor ``(..., C)``.
        """
        x = layers if isinstance(layers, torch.Tensor) else torch.stack(list(layers))  # (L, ..., C)
        if x.shape[0] != self.n_layers:
            raise ConfigError(f"ScalarMix was built for {self.n_layers} layers but got {x.shape[0]}")
        if self.layer_norm:
            x = F.layer_norm(x, x.shape[-1:])
        w = self.weights.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))  # (L, 1, ..., 1)
        return self.gamma.to(x.dtype) * (w * x).sum(0)

    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> None:
        """Write the mix as JSON (weights before and after softmax, gamma, layer_norm), atomically."""
        from ..utils import atomic_write_text

        data = {
            "n_layers": self.n_layers,
            "layer_norm": self.layer_norm,
            "scalar_parameters": self.scalar_parameters.detach().tolist(),
            "weights": self.weights.detach().tolist(),
            "gamma": float(self.gamma.detach()),
            **(extra or {}),
        }
        atomic_write_text(Path(path), json.dumps(data, indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "ScalarMix":
        """Read a mix written by :meth:`save` (raises :class:`ConfigError` on a malformed file)."""
        p = Path(path)
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
            mix = cls(int(data["n_layers"]), bool(data.get("layer_norm", False)), data["scalar_parameters"])
            mix.gamma.data.fill_(float(data["gamma"]))
        except OSError as e:
            raise ConfigError(f"{p}: cannot read scalar mix ({e.strerror})") from None
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"{p}: not a scalar-mix file written by `features probe --save-mix` ({e})") from None
        return mix


# ------------------------------------------------------------------------------ loading
def load_model_and_tokenizer(spec: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, Any]:
    """A pre-trained model (eval mode) and its tokenizer from a directory or ``builtin:minilm``.

    Args:
        spec: a model directory holding the model (``config.json`` + weights, ours or a
            ``transformers`` one) and a tokenizer, or ``"builtin:minilm"``.
        device: where to put the model.

    Returns:
        ``(model, tokenizer)``.

    Raises:
        CheckpointError: no model or no tokenizer at ``spec``.
    """
    from ..interop.loading import load_pretrained

    # the one loader: directory check, device check before loading, tokenizer checked against the model
    model, tok = load_pretrained(spec, device=device)
    return model, tok


# ------------------------------------------------------------------------------ extraction
def _n_states(model: nn.Module) -> int:
    """Hidden states the model's main stack gives (embeddings + one per layer), as its backbone says."""
    from ..models.backbone import backbone_of

    return int(backbone_of(model).num_hidden_states)


def _resolve_layer(layer: int, n_states: int) -> int:
    idx = layer + n_states if layer < 0 else layer
    if not 0 <= idx < n_states:
        raise ConfigError(
            f"layer {layer} does not exist: the model has {n_states} hidden states "
            f"(0 = embeddings .. {n_states - 1} = last block; negatives count from the end)"
        )
    return idx


def hidden_states(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """All hidden states ``(L+1) x (B, T, C)`` of the (encoder) stack, without running any head.

    Args:
        model: a :class:`~transferlab.models.model.TransferModel`.
        batch: ``input_ids``, ``attention_mask`` and optionally ``token_type_ids``.

    Returns:
        The embedding output followed by each block's output (the last one after the final norm
        for pre-norm stacks, as in ``transformers``).
    """
    from ..models.backbone import backbone_of

    bb = backbone_of(model)
    ids, mask = batch["input_ids"], batch.get("attention_mask")
    if bb.is_encoder_decoder:  # the encoder's states: what the decoder reads
        _, hs = bb.encode_states(ids, mask, output_hidden_states=True)
    else:
        tt = batch.get("token_type_ids") if model.config.type_vocab_size else None
        hs = bb(input_ids=ids, attention_mask=mask, token_type_ids=tt, output_hidden_states=True).hidden_states
    return hs


def _pool(model: nn.Module, h: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """(L, B, T, C) -> (L, B, C) with :func:`~transferlab.models.heads.pool`, the heads' pooling,
    applied to every layer at once; ``cls`` is the raw first-token state of each layer (no
    pooler: a pooler reads the last layer only)."""
    from ..models.heads import pool

    L, B, T, C = h.shape
    out = pool(model.config, h.reshape(L * B, T, C), mask.repeat(L, 1), how)  # (L * B, C)
    return out.reshape(L, B, C)


@dataclass
class Features:
    """Extracted vectors.

    Attributes:
        values: float32 array: pooled ``(N, C)``, per token ``(N, T, C)``; with ``layer="all"`` a
            layer axis after N: ``(N, L+1, C)`` or ``(N, L+1, T, C)``.
        attention_mask: ``(N, T)`` 1 for real tokens, per-token features only.
        input_ids: ``(N, T)`` token ids, per-token features only (0 on padding).
        layers: the hidden-state indices the values come from (all of them for a mix).
        meta: how they were made (model, layer, pooling, ...).
    """

    values: np.ndarray
    attention_mask: np.ndarray | None = None
    input_ids: np.ndarray | None = None
    layers: list[int] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


def extract_features(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    layer: int | str | None = None,
    pooling: str | None = None,
    text_pairs: Sequence[str] | None = None,
    mix: ScalarMix | None = None,
    config: FeaturesConfig | None = None,
    **settings: Any,
) -> Features:
    """Frozen vectors for ``texts`` from one layer, all layers, or a scalar mix of all layers.

    Args:
        model: a :class:`~transferlab.models.model.TransferModel` (any family).
        tokenizer: its :class:`~transferlab.tokenizer.Tokenizer`.
        texts: the inputs (first segments for pairs).
        layer: hidden-state index (``0`` embeddings, ``-1`` last block), ``"all"`` or ``"mix"``
            (default: the config's, ``-1``).
        pooling: ``cls`` (first token), ``mean`` (over real tokens), ``last`` (last real token)
            or ``none`` (per-token vectors, zero-padded to the longest input) (default: the
            config's, ``mean``).
        text_pairs: optional second segments (sentence-pair tasks).
        mix: the :class:`ScalarMix` for ``layer="mix"``; default a uniform average of all layers.
        config: the :class:`FeaturesConfig` (``batch_size``, ``max_length``, ``dtype`` (bf16
            autocast is about 4x faster on CPUs with avx512_bf16), ``progress``); default: a fresh one.
        **settings: :class:`FeaturesConfig` fields overriding ``config`` (``batch_size=8``).

    Returns:
        :class:`Features`.

    Raises:
        ConfigError: an unknown setting or pooling, a layer the model does not have.
        DataError: no texts, or as many pairs as texts missing.
    """
    given = {k: v for k, v in (("layer", layer), ("pooling", pooling)) if v is not None}
    cfg = features_config(config, **given, **settings)
    layer, pooling = cfg.layer, cfg.pooling
    texts = list(texts)
    if not texts:
        raise DataError("no texts to extract features from")
    if text_pairs is not None and len(text_pairs) != len(texts):
        raise DataError(f"{len(text_pairs)} text pairs for {len(texts)} texts")
    n_states = _n_states(model)
    if layer == "mix":
        mix = mix if mix is not None else ScalarMix(n_states, trainable=False)
        if mix.n_layers != n_states:
            raise ConfigError(f"the scalar mix has {mix.n_layers} layers but the model has {n_states} hidden states")
        layers = list(range(n_states))
    elif layer == "all":
        layers = list(range(n_states))
    else:  # a number: FeaturesConfig.validate checked the form
        layers = [_resolve_layer(int(layer), n_states)]

    from ..checks import cap_max_length

    max_length = cap_max_length(model, cfg.max_length)  # longer inputs would index past the position table
    was_training = model.training
    model.eval()  # no dropout; restored below so a caller mid-training is not surprised
    try:
        return _extract(model, tokenizer, texts, layer, layers, n_states, pooling, text_pairs, mix, cfg.batch_size,
                        max_length, cfg.dtype, cfg.progress)
    finally:
        model.train(was_training)


def _extract(model: nn.Module, tokenizer: Any, texts: list[str], layer: int | str, layers: list[int],
             n_states: int, pooling: str, text_pairs: Sequence[str] | None, mix: ScalarMix | None,
             batch_size: int, max_length: int, dtype: str, progress: bool) -> Features:
    device = next(model.parameters()).device
    enc = tokenizer(texts, text_pairs, truncation=True, max_length=max_length)
    ids_all: list[list[int]] = enc["input_ids"]
    tts_all = enc.get("token_type_ids")
    order = sorted(range(len(texts)), key=lambda i: len(ids_all[i]))  # length-sorted batches
    pad_id = SpecialIds.resolve(getattr(model, "config", None), tokenizer).pad  # the one rule (specials.py)
    t_max = max(len(x) for x in ids_all)
    out: np.ndarray | None = None
    steps = range(0, len(order), batch_size)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="features", unit="batch")
    half = resolve_dtype(dtype, device)  # the one dtype choice (runtime.py): auto decided by the hardware
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16 if half == "bf16" else torch.float16)
                if half in ("bf16", "fp16") else contextlib.nullcontext())
    with torch.inference_mode(), autocast:
        for s in steps:
            idx = order[s : s + batch_size]
            T = max(len(ids_all[i]) for i in idx)
            ids = torch.full((len(idx), T), pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), T), dtype=torch.long)
            tts = torch.zeros((len(idx), T), dtype=torch.long)
            for r, i in enumerate(idx):  # right padding; positions then match the unpadded run
                n = len(ids_all[i])
                ids[r, :n] = torch.tensor(ids_all[i])
                mask[r, :n] = 1
                if tts_all is not None:
                    tts[r, :n] = torch.tensor(tts_all[i])
            batch = {"input_ids": ids.to(device), "attention_mask": mask.to(device), "token_type_ids": tts.to(device)}
            hs = hidden_states(model, batch)
            h = torch.stack([hs[j] for j in layers]).float()  # (L', B, T, C)
            mask_d = batch["attention_mask"]
            if pooling != "none":
                h = _pool(model, h, mask_d, pooling)  # (L', B, C)
            else:
                h = h * mask_d[None, :, :, None].to(h.dtype)  # zero the padding
            if layer == "mix":
                h = mix.to(h.device)(h)[None]  # (1, B, ...)
            v = h.transpose(0, 1).cpu().numpy()  # (B, L', ...)
            if layer != "all":
                v = v[:, 0]
            if out is None:
                shape = (len(texts),) + v.shape[1:]
                if pooling == "none":  # pad the token axis to the longest input
                    shape = shape[:-2] + (t_max, shape[-1])
                out = np.zeros(shape, dtype=np.float32)
            if pooling == "none":
                out[idx, ..., :T, :] = v
            else:
                out[idx] = v
    assert out is not None
    attn = tok_ids = None
    if pooling == "none":
        attn = np.zeros((len(texts), t_max), dtype=np.int64)
        tok_ids = np.zeros((len(texts), t_max), dtype=np.int64)
        for i, x in enumerate(ids_all):
            attn[i, : len(x)] = 1
            tok_ids[i, : len(x)] = x
    meta = {"layer": str(layer), "layers": layers, "pooling": pooling, "max_length": max_length, "n_states": n_states,
            "family": str(getattr(model.config.family, "value", model.config.family))}
    if layer == "mix":
        meta["mix_weights"] = [round(float(w), 6) for w in mix.weights.detach()]
        meta["mix_gamma"] = float(mix.gamma.detach())
    return Features(out, attn, tok_ids, layers, meta)


def save_features(features: Features, path: str | Path) -> list[Path]:
    """Write features as ``.npy`` or ``.safetensors``, atomically.

    ``.safetensors`` holds ``features`` (+ ``attention_mask`` and ``input_ids`` for per-token
    vectors) with the settings as string metadata. ``.npy`` holds the array; per-token vectors
    also write ``NAME.mask.npy`` and ``NAME.ids.npy``; settings go to ``NAME.json``.

    Returns:
        The files written.
    """
    import io

    from ..utils import atomic_write_bytes, atomic_write_text

    p = Path(path)
    arrays = {"features": features.values}
    if features.attention_mask is not None:
        arrays["attention_mask"] = features.attention_mask
        arrays["input_ids"] = features.input_ids
    meta = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in features.meta.items()}
    if p.suffix == ".safetensors":
        from safetensors.numpy import save

        atomic_write_bytes(p, save({k: np.ascontiguousarray(v) for k, v in arrays.items()}, metadata=meta))
        return [p]
    if p.suffix != ".npy":
        raise ConfigError(f"{p}: output must end in .npy or .safetensors")
    written = []
    for key, arr in arrays.items():
        target = p if key == "features" else p.with_name(p.stem + (".mask.npy" if key == "attention_mask" else ".ids.npy"))
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        atomic_write_bytes(target, buf.getvalue())
        written.append(target)
    side = p.with_suffix(".json")
    atomic_write_text(side, json.dumps({**features.meta, "shape": list(features.values.shape)}, indent=2) + "\n")
    return written + [side]
