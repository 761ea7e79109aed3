"""Frozen features from a pre-trained model: any layer, a learned scalar mix, probes, neighbours.

* :func:`extract_features` — per-token or pooled vectors (``cls``, ``mean``, ``last``) from one
  layer (``0`` = the embedding output, ``L`` = the last block, negatives count from the end), from
  all layers at once (``"all"``), or from a :class:`ScalarMix` over all layers (``"mix"``).
  Encoder-decoders give their encoder's states; decoders are read causally (use ``mean`` or
  ``last`` pooling: a decoder's first token has seen nothing).
* :class:`ScalarMix` — ELMo's ``gamma * sum_l softmax(w)_l h_l`` (Peters et al., 2018, eq. 1).
* :func:`probe` — linear probes (logistic regression) on frozen pooled features of a
  classification task: one per layer, one on the uniform average of the layers and one on a
  scalar mix learned jointly with a linear head, the mix's weights reported.
* :func:`neighbours` — contextual nearest neighbours of a word in context ("play" the verb, the
  theatre piece and the sports move get different vectors), next to the static input-embedding
  nearest vocabulary tokens. A word split into sub-words gets the mean of its pieces' vectors.

All extraction runs under ``torch.inference_mode`` with the model in eval mode (no dropout), in
batches sorted by length so little time is spent on padding.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import Family
from .errors import CheckpointError, ConfigError, DataError

POOLINGS = ("cls", "mean", "last", "none")

#: the "play" example: one sentence per sense (games, music, theatre, sport, a part in events)
PLAY_EXAMPLES = (
    "The children went outside to play in the garden after lunch.",
    "She learned to play the piano and the violin as a child.",
    "The play opened on Broadway and the critics loved the second act.",
    "He will play for the national team in the match against France next week.",
    "Luck seems to play a big part in who wins the election.",
)


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
        from .utils import atomic_write_text

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
    from .models.model import from_pretrained
    from .tokenizer import Tokenizer

    s = str(spec)
    if s.startswith("builtin:"):
        from .hub import resolve_builtin

        path = resolve_builtin(s)
    else:
        path = Path(s)
        if not path.is_dir():
            raise CheckpointError(f"{path}: not a model directory")
    from .checks import check_tokenizer, resolve_device

    dev = resolve_device(device)  # before loading: a bad --device costs nothing
    model = from_pretrained(path)
    try:
        tok = Tokenizer.from_pretrained(path)
    except DataError as e:
        raise CheckpointError(f"{path}: model has no tokenizer beside it ({e})") from None
    check_tokenizer(model.config, tok, str(path))
    return model.to(dev).eval(), tok


# ------------------------------------------------------------------------------ extraction
def _n_states(model: nn.Module) -> int:
    return int(model.config.n_layers) + 1  # embeddings + one per (encoder) block


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
    bb = model.backbone
    ids, mask = batch["input_ids"], batch.get("attention_mask")
    if Family(model.config.family) == Family.ENCODER_DECODER:
        _, hs = bb.encode(ids, mask, output_hidden_states=True)
    else:
        tt = batch.get("token_type_ids") if model.config.type_vocab_size else None
        hs = bb(input_ids=ids, attention_mask=mask, token_type_ids=tt, output_hidden_states=True).hidden_states
    return hs


def _pool(h: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """(..., B, T, C) -> (..., B, C); ``cls`` is the raw first-token state of that layer."""
    if how == "cls":
        return h[..., 0, :]
    m = mask.to(h.dtype)  # (B, T)
    if how == "mean":
        return (h * m[..., None]).sum(-2) / m.sum(-1, keepdim=True).clamp(min=1)
    # last attended position, whatever the padding side
    T = mask.shape[-1]
    idx = (torch.arange(T, device=mask.device)[None] * mask.long()).argmax(-1)  # (B,)
    return h[..., torch.arange(mask.shape[0], device=mask.device), idx, :]


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
    layer: int | str = -1,
    pooling: str = "mean",
    text_pairs: Sequence[str] | None = None,
    mix: ScalarMix | None = None,
    batch_size: int = 32,
    max_length: int = 256,
    dtype: str = "fp32",
    progress: bool = False,
) -> Features:
    """Frozen vectors for ``texts`` from one layer, all layers, or a scalar mix of all layers.

    Args:
        model: a :class:`~transferlab.models.model.TransferModel` (any family).
        tokenizer: its :class:`~transferlab.tokenizer.Tokenizer`.
        texts: the inputs (first segments for pairs).
        layer: hidden-state index (``0`` embeddings, ``-1`` last block), ``"all"`` or ``"mix"``.
        pooling: ``cls`` (first token), ``mean`` (over real tokens), ``last`` (last real token)
            or ``none`` (per-token vectors, zero-padded to the longest input).
        text_pairs: optional second segments (sentence-pair tasks).
        mix: the :class:`ScalarMix` for ``layer="mix"``; default a uniform average of all layers.
        batch_size: inputs per forward pass.
        max_length: truncation length in tokens (special tokens included).
        dtype: ``fp32`` or ``bf16`` (autocast; about 4x faster on CPUs with avx512_bf16, the
            results are returned as float32 either way).
        progress: show a tqdm bar.

    Returns:
        :class:`Features`.
    """
    if pooling not in POOLINGS:
        raise ConfigError(f"pooling {pooling!r}: expected one of {', '.join(POOLINGS)}")
    if dtype not in ("fp32", "bf16"):
        raise ConfigError(f"dtype {dtype!r}: expected fp32 or bf16")
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
    elif isinstance(layer, (int, np.integer)) or (isinstance(layer, str) and re.fullmatch(r"-?\d+", layer)):
        layers = [_resolve_layer(int(layer), n_states)]
    else:
        raise ConfigError(f"layer {layer!r}: expected an integer, 'all' or 'mix'")

    from .checks import cap_max_length

    max_length = cap_max_length(model, max_length)  # longer inputs would index past the position table
    was_training = model.training
    model.eval()  # no dropout; restored below so a caller mid-training is not surprised
    try:
        return _extract(model, tokenizer, texts, layer, layers, n_states, pooling, text_pairs, mix, batch_size,
                        max_length, dtype, progress)
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
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    t_max = max(len(x) for x in ids_all)
    out: np.ndarray | None = None
    steps = range(0, len(order), batch_size)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="features", unit="batch")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext()
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
                h = _pool(h, mask_d, pooling)  # (L', B, C)
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
            "family": str(Family(model.config.family).value)}
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

    from .utils import atomic_write_bytes, atomic_write_text

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


# ------------------------------------------------------------------------------ probing
def fit_logreg(
    x_train: np.ndarray,
    y_train: Sequence[Any],
    x_val: np.ndarray,
    y_val: Sequence[Any],
    c_grid: Sequence[float] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0),
    seed: int = 0,
) -> tuple[Any, float, float]:
    """Standardise + logistic regression, C picked by validation accuracy (ties: smaller C).

    Returns:
        ``(fitted sklearn pipeline, best C, validation accuracy)``.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    best: tuple[float, float, Any] | None = None
    for c in c_grid:
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000, random_state=seed))
        clf.fit(x_train, y_train)
        acc = float(np.mean(clf.predict(x_val) == np.asarray(y_val)))
        if best is None or acc > best[0]:
            best = (acc, c, clf)
    assert best is not None
    return best[2], best[1], best[0]


def train_scalar_mix(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    epochs: int = 300,
    lr: float = 0.05,
    weight_decays: Sequence[float] = (1e-3, 1e-2, 1e-1),
    layer_norm: bool = True,
    seed: int = 0,
) -> tuple[ScalarMix, nn.Linear, float]:
    """Learn a :class:`ScalarMix` and a linear classifier jointly on frozen per-layer features.

    Full-batch Adam on cross-entropy (the features are small: N x L x C). For each L2 strength
    of the classifier (the mix itself is not decayed: a decayed mix drifts to uniform) the step
    with the best validation accuracy is kept (ties: the lower validation loss); the best of those
    wins. A linear head on a few hundred dimensions fits 1,000 examples perfectly, so without this
    selection the mix weights would only record which layers make overfitting easiest.

    Args:
        x_train: ``(N, L, C)`` pooled features of every layer.
        y_train: ``(N,)`` integer class ids.
        x_val, y_val: the same for model selection.
        epochs: full-batch steps per weight decay.
        lr: Adam learning rate.
        weight_decays: L2 strengths tried on the classifier.
        layer_norm: see :class:`ScalarMix`.
        seed: for the classifier's initialisation.

    Returns:
        ``(mix, classifier, best validation accuracy)``.
    """
    xt, xv = torch.as_tensor(x_train, dtype=torch.float32), torch.as_tensor(x_val, dtype=torch.float32)
    yt, yv = torch.as_tensor(y_train, dtype=torch.long), torch.as_tensor(y_val, dtype=torch.long)
    n_classes = int(max(yt.max(), yv.max())) + 1
    xt_l, xv_l = xt.transpose(0, 1), xv.transpose(0, 1)  # (L, N, C): the mix wants layers first
    best: tuple[float, float, Any] = (-1.0, math.inf, None)
    for wd in weight_decays:
        g = torch.Generator().manual_seed(seed)
        mix = ScalarMix(xt.shape[1], layer_norm=layer_norm)
        head = nn.Linear(xt.shape[2], n_classes)
        with torch.no_grad():
            head.weight.copy_(torch.randn(head.weight.shape, generator=g) * 0.01)
            head.bias.zero_()
        opt = torch.optim.Adam([{"params": mix.parameters(), "weight_decay": 0.0},
                                {"params": head.parameters(), "weight_decay": wd}], lr=lr)
        with torch.enable_grad():
            for _ in range(epochs):
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(head(mix(xt_l)), yt).backward()
                opt.step()
                with torch.no_grad():
                    logits = head(mix(xv_l))
                    acc = float((logits.argmax(-1) == yv).float().mean())
                    vloss = float(F.cross_entropy(logits, yv))
                if acc > best[0] or (acc == best[0] and vloss < best[1]):
                    best = (acc, vloss, (mix.n_layers, layer_norm, {k: v.clone() for k, v in mix.state_dict().items()},
                                         {k: v.clone() for k, v in head.state_dict().items()}))
    n, ln, mix_state, head_state = best[2]
    mix, head = ScalarMix(n, layer_norm=ln), nn.Linear(xt.shape[2], n_classes)
    mix.load_state_dict(mix_state)
    head.load_state_dict(head_state)
    return mix, head, best[0]


@dataclass
class ProbeResult:
    """What :func:`probe` found. Accuracies on a 0-1 scale."""

    rows: list[dict[str, Any]]  #: one per layer + "mean" + "mix": {probe, layer, C, validation, test}
    mix_weights: list[float]  #: softmax-normalised learned weights, embeddings first
    mix_gamma: float
    n_train: int
    task: str
    pooling: str
    mix: ScalarMix | None = None

    def table(self) -> str:
        """A plain-text table of the rows plus the learned weights."""
        lines = [f"{'probe':<10} {'C':>6} {'val acc':>8} {'test acc':>8}"]
        for r in self.rows:
            test = f"{r['test']:.4f}" if r.get("test") is not None else "-"
            lines.append(f"{r['probe']:<10} {r['C']:>6g} {r['validation']:>8.4f} {test:>8}")
        w = " ".join(f"{x:.3f}" for x in self.mix_weights)
        lines.append(f"learned mix weights (layer 0 = embeddings .. {len(self.mix_weights) - 1}): {w}; gamma {self.mix_gamma:.3f}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "pooling": self.pooling, "n_train": self.n_train, "rows": self.rows,
                "mix_weights": self.mix_weights, "mix_gamma": self.mix_gamma}


def probe(
    model: nn.Module,
    tokenizer: Any,
    task: str | Any = "rotten-tomatoes",
    train_size: int | None = 1000,
    seed: int = 0,
    pooling: str = "mean",
    max_length: int = 128,
    batch_size: int = 32,
    dtype: str = "fp32",
    c_grid: Sequence[float] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0),
    eval_on_test: bool = True,
    progress: bool = False,
    mix_epochs: int = 300,
) -> ProbeResult:
    """Linear probes on frozen features of every layer, their uniform average and a learned mix.

    Each probe is the same classifier (standardise + logistic regression, C tuned on the
    validation split), so the rows differ only in their features; the "mix" row uses the
    weights of a :class:`ScalarMix` trained jointly with a linear head (:func:`train_scalar_mix`).

    Args:
        model, tokenizer: the frozen model and its tokenizer.
        task: a built-in classification task name or a
            :class:`~transferlab.finetune.tasks.TaskData` (``{"text", "label"}`` examples,
            ``"pair"`` too for pair-classification).
        train_size: labelled training examples (a seeded subsample; ``None`` = all).
        seed: subsample and initialisation seed.
        pooling: ``mean``, ``cls`` or ``last``.
        max_length, batch_size, dtype: extraction settings (see :func:`extract_features`).
        c_grid: inverse regularisation strengths tried.
        eval_on_test: also score the test split.
        progress: tqdm bars.
        mix_epochs: full-batch steps of the scalar-mix training (per weight decay).

    Returns:
        :class:`ProbeResult`.
    """
    from .evaluation.baselines import _task_data, subsample

    if pooling == "none":
        raise ConfigError("probe needs a pooled vector per example: pooling cls, mean or last")
    splits = _task_data(task)
    kind = splits.task_type
    if kind not in ("classification", "pair-classification"):
        raise ConfigError(f"probe needs a classification task, {splits.name!r} is {kind}")
    train = subsample(splits.train, train_size, seed, kind)
    parts = {"train": train, "validation": splits.validation}
    if eval_on_test:
        parts["test"] = splits.test
    labels = sorted({str(ex["label"]) for ex in splits.train + splits.validation})
    lid = {lab: i for i, lab in enumerate(labels)}
    feats, ys = {}, {}
    for name, exs in parts.items():
        if not exs:
            raise DataError(f"probe: the {name} split is empty")
        pairs = [ex["pair"] for ex in exs] if kind == "pair-classification" else None
        feats[name] = extract_features(model, tokenizer, [ex["text"] for ex in exs], "all", pooling, pairs,
                                       batch_size=batch_size, max_length=max_length, dtype=dtype,
                                       progress=progress).values  # (N, L+1, C)
        ys[name] = np.array([lid.get(str(ex["label"]), -1) for ex in exs])
    n_states = feats["train"].shape[1]
    rows: list[dict[str, Any]] = []

    def score(probe_name: str, layer: Any, x: dict[str, np.ndarray]) -> None:
        # the same classifier for every row: only the features differ
        clf, c, val = fit_logreg(x["train"], ys["train"], x["validation"], ys["validation"], c_grid, seed)
        test = float(np.mean(clf.predict(x["test"]) == ys["test"])) if eval_on_test else None
        rows.append({"probe": probe_name, "layer": layer, "C": c, "validation": val, "test": test})

    for j in range(n_states):
        score(f"layer {j}", j, {k: v[:, j] for k, v in feats.items()})
    score("mean", "mean", {k: v.mean(1) for k, v in feats.items()})
    mix, _, _ = train_scalar_mix(feats["train"], ys["train"], feats["validation"], ys["validation"],
                                 epochs=mix_epochs, seed=seed)
    with torch.no_grad():  # (N, L, C) -> layers first for the mix -> (N, C)
        score("mix", "mix", {k: mix(torch.as_tensor(v).transpose(0, 1)).numpy() for k, v in feats.items()})
    return ProbeResult(rows, [float(w) for w in mix.weights.detach()], float(mix.gamma.detach()), len(train),
                       splits.name, pooling, mix)


# ------------------------------------------------------------------------------ neighbours
def _word_pattern(word: str) -> re.Pattern[str]:
    return re.compile(rf"(?<!\w){re.escape(word)}(?!\w)", re.IGNORECASE)


def find_occurrences(sentences: Iterable[str], word: str) -> list[tuple[str, int, int]]:
    """Every whole-word, case-insensitive occurrence ``(sentence, start, end)`` of ``word``."""
    pat = _word_pattern(word)
    return [(s, m.start(), m.end()) for s in sentences for m in pat.finditer(s)]


def word_vectors(
    model: nn.Module,
    tokenizer: Any,
    occurrences: Sequence[tuple[str, int, int]],
    layer: int = -1,
    batch_size: int = 32,
    max_length: int = 128,
) -> tuple[np.ndarray, np.ndarray]:
    """Contextual vector of each word occurrence: the mean of its sub-word vectors at ``layer``.

    Args:
        occurrences: ``(sentence, start_char, end_char)`` of the word in each sentence.
        layer: hidden-state index (``0`` = embedding output, ``-1`` = last block).

    Returns:
        ``(vectors (K, C) float32, found (K,) bool)``; ``found`` is False where truncation cut the
        word off (its vector is then zero).
    """
    from .checks import cap_max_length

    max_length = cap_max_length(model, max_length)
    occ = list(occurrences)
    feats = extract_features(model, tokenizer, [s for s, _, _ in occ], layer, "none",
                             batch_size=batch_size, max_length=max_length)
    enc = tokenizer([s for s, _, _ in occ], truncation=True, max_length=max_length, return_offsets_mapping=True)
    vecs = np.zeros((len(occ), feats.values.shape[-1]), dtype=np.float32)
    found = np.zeros(len(occ), dtype=bool)
    for i, (_, a, b) in enumerate(occ):
        # tokens whose character span overlaps the word; special tokens have empty (0, 0) spans
        pieces = [t for t, (s, e) in enumerate(enc["offset_mapping"][i]) if e > s and s < b and e > a]
        if pieces:
            vecs[i] = feats.values[i, pieces].mean(0)
            found[i] = True
    return vecs, found


def static_neighbours(model: nn.Module, tokenizer: Any, word: str, k: int = 10) -> list[tuple[str, float]]:
    """Nearest vocabulary tokens to ``word``'s input embedding (mean of its pieces), by cosine.

    Special tokens and the word's own pieces are left out.
    """
    emb = model.get_input_embeddings().weight.detach().float()  # (V, C)
    variants = [word] + ([" " + word] if getattr(tokenizer, "kind", "") == "bpe" else [])
    ids = tokenizer(variants[-1], add_special_tokens=False)["input_ids"]
    if not ids:
        raise DataError(f"the tokenizer produces no tokens for {word!r}")
    q = emb[ids].mean(0)
    sims = F.cosine_similarity(emb, q[None], dim=-1)  # (V,)
    exclude = set(ids) | set(getattr(tokenizer, "all_special_ids", []) or [])
    for role in ("pad", "unk", "cls", "sep", "mask", "bos", "eos"):
        t = getattr(tokenizer, f"{role}_token_id", None)
        if t is not None:
            exclude.add(t)
    order = torch.argsort(sims, descending=True).tolist()
    out = []
    for t in order:
        if t in exclude or t >= len(tokenizer):
            continue
        out.append((tokenizer.convert_ids_to_tokens(t), float(sims[t])))
        if len(out) == k:
            break
    return out


def sample_sentences(corpus: str | Sequence[str], word: str, n: int = 2000, seed: int = 0,
                     max_chars: int = 400) -> list[str]:
    """Up to ``n`` sentences containing ``word``, sampled reproducibly (reservoir) from a corpus.

    Args:
        corpus: ``builtin:NAME``, a file or folder (read with ``read_documents``), or a list of
            sentences/documents.
        word: only sentences containing it (whole word, any case) are kept.
        n: sample size.
        seed: reservoir-sampling seed.
        max_chars: sentences longer than this are skipped (run-ons and lists, not sentences).

    Returns:
        The sampled sentences (distinct: repeated boilerplate would crowd out real neighbours),
        in corpus order.
    """
    from .data.sentences import split_sentences

    pat = _word_pattern(word)
    if isinstance(corpus, (str, Path)):
        from .data.corpus import read_documents

        docs: Iterable[str] = (d.text for d in read_documents(str(corpus)))
    else:
        docs = corpus
    rng = random.Random(seed)
    reservoir: list[tuple[int, str]] = []
    seen = 0
    distinct: set[str] = set()
    for doc in docs:
        if not pat.search(doc):  # cheap pre-filter before sentence splitting
            continue
        for a, b in split_sentences(doc):
            s = " ".join(doc[a:b].split())
            if len(s) > max_chars or s in distinct or not pat.search(s):
                continue
            distinct.add(s)
            if len(reservoir) < n:
                reservoir.append((seen, s))
            else:
                j = rng.randint(0, seen)
                if j < n:
                    reservoir[j] = (seen, s)
            seen += 1
    return [s for _, s in sorted(reservoir)]


@dataclass
class NeighbourReport:
    """Result of :func:`neighbours`."""

    word: str
    layer: int
    queries: list[dict[str, Any]]  #: {sentence, neighbours: [(similarity, sentence), ...]}
    static: list[tuple[str, float]]  #: nearest vocabulary tokens by input embedding
    n_occurrences: int

    def format(self, width: int = 110) -> str:
        def mark(s: str) -> str:
            return _word_pattern(self.word).sub(lambda m: f"[{m.group(0)}]", s, count=1)

        def clip(s: str) -> str:
            s = mark(s)
            if len(s) <= width:
                return s
            i = max(s.find("["), 0)
            a = max(0, min(i - width // 3, len(s) - width))
            return ("..." if a else "") + s[a : a + width - 6] + "..."

        lines = [f"contextual neighbours of {self.word!r} (layer {self.layer}, {self.n_occurrences} corpus occurrences)"]
        for q in self.queries:
            lines.append(f"\n> {mark(q['sentence'])}")
            for sim, s in q["neighbours"]:
                lines.append(f"  {sim:.3f}  {clip(s)}")
        toks = ", ".join(f"{t} ({s:.2f})" for t, s in self.static)
        lines.append(f"\nstatic input-embedding neighbours of {self.word!r}: {toks}")
        return "\n".join(lines)


def neighbours(
    model: nn.Module,
    tokenizer: Any,
    word: str,
    corpus: str | Sequence[str] = "builtin:reviews+news",
    sentences: Sequence[str] | None = None,
    n_sentences: int = 2000,
    k: int = 5,
    layer: int = -1,
    seed: int = 0,
    batch_size: int = 32,
    max_length: int = 128,
) -> NeighbourReport:
    """Nearest corpus occurrences of ``word`` to each query sentence, by contextual vector.

    Args:
        word: the word to look at (whole-word, case-insensitive match).
        corpus: where occurrences come from (see :func:`sample_sentences`).
        sentences: query sentences containing ``word``; default :data:`PLAY_EXAMPLES` for
            "play", else the first three sampled sentences (then left out of the pool).
        n_sentences: corpus sentences containing the word to sample.
        k: neighbours per query (and static neighbours).
        layer: hidden state used (``-1`` the last block).
        seed: sampling seed.

    Returns:
        :class:`NeighbourReport`; ``format()`` renders it.
    """
    pool = sample_sentences(corpus, word, n_sentences, seed)
    if sentences is None:
        if word.lower() == "play":
            sentences = list(PLAY_EXAMPLES)
        else:
            sentences, pool = pool[:3], pool[3:]
    queries = list(sentences)
    for s in queries:
        if not _word_pattern(word).search(s):
            raise ConfigError(f"query sentence does not contain {word!r}: {s!r}")
    pool_occ = find_occurrences(pool, word)
    if not pool_occ:
        raise DataError(f"{word!r} does not occur in the corpus sample ({corpus if isinstance(corpus, str) else 'given sentences'})")
    q_occ = [next(iter(find_occurrences([s], word))) for s in queries]
    vecs, found = word_vectors(model, tokenizer, q_occ + pool_occ, layer, batch_size, max_length)
    for s, ok in zip(queries, found[: len(q_occ)]):
        if not ok:
            raise ConfigError(f"the word falls beyond max_length={max_length} tokens in the query {s[:60]!r}...; "
                              "shorten it or raise --max-length")
    v = torch.nn.functional.normalize(torch.as_tensor(vecs), dim=-1)
    qv, pv = v[: len(q_occ)], v[len(q_occ):]
    pool_ok = torch.as_tensor(found[len(q_occ):])
    sims = qv @ pv.T  # (Q, P) cosine
    sims[:, ~pool_ok] = -2.0
    out = []
    for i, s in enumerate(queries):
        top = torch.topk(sims[i], min(k, int(pool_ok.sum()))).indices.tolist()
        out.append({"sentence": s, "neighbours": [(float(sims[i, j]), pool_occ[j][0]) for j in top]})
    n_states = _n_states(model)
    return NeighbourReport(word, _resolve_layer(layer, n_states), out, static_neighbours(model, tokenizer, word, k),
                           len(pool_occ))
