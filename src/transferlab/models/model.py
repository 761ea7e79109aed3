"""TransferModel: a backbone of any family plus named heads, with a Hugging Face-style surface.

``model(input_ids=..., attention_mask=..., token_type_ids=..., decoder_input_ids=...,
output_hidden_states=True)`` returns a :class:`ModelOutput` with ``.logits`` (from the first
head in ``config.heads``), ``.hidden_states`` and friends, so code written against
``transformers`` ports by changing imports. ``save_pretrained`` writes ``config.json`` +
``model.safetensors`` atomically; :func:`from_pretrained` reads those folders back. Folders of
``transformers`` and ``builtin:`` names are :func:`transferlab.from_pretrained`'s (interop), so
this package never imports interop or the hub.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._version import __version__
from ..config import Family, ModelConfig, get_preset
from ..errors import CheckpointError, ConfigError
from ..objectives.losses import lm_cross_entropy
from .blocks import KVCache
from .backbone import Backbone, build_backbone
from .families import BackboneOutput, shift_tokens_right
from .heads import HEADS, POOLED_HEADS, pool

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass
class ModelOutput:
    """What a forward returns; attribute, key and index access like ``transformers`` outputs.

    ``out.logits`` / ``out["logits"]`` as before; ``out[0]``, ``out[:2]`` and ``out.to_tuple()``
    (what ``return_dict=False`` returns) follow the field order of the matching ``transformers``
    output class, skipping fields that are None: with a head ``(loss, logits, past_key_values,
    hidden_states)`` (QA: ``(loss, start_logits, end_logits, ...)``; encoder-decoders then
    ``encoder_last_hidden_state, encoder_hidden_states``), without one the base model's
    ``(last_hidden_state, pooler_output | past_key_values, hidden_states, ...)``. So ``out[0]`` is
    the loss when labels were given, else the logits, exactly where ``transformers`` code expects
    them. Iterating yields the keys, as ``transformers``' ``ModelOutput`` (an ordered dict) does.
    """

    logits: torch.Tensor | None = None  # (B, T, V) / (B, num_labels) / span: (B, T, 2) start, end
    loss: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    pooler_output: torch.Tensor | None = None
    encoder_last_hidden_state: torch.Tensor | None = None
    encoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    past_key_values: KVCache | None = None
    start_logits: torch.Tensor | None = None  # (B, T) span head: logits[..., 0]
    end_logits: torch.Tensor | None = None  # (B, T) span head: logits[..., 1]
    order: tuple[str, ...] = field(default=(), repr=False, compare=False)
    """Key order of the matching transformers output class; empty = the field order above."""

    @property
    def decoder_hidden_states(self) -> tuple[torch.Tensor, ...] | None:
        """``transformers``' name for an encoder-decoder's decoder states (our ``hidden_states``)."""
        return self.hidden_states

    def keys(self) -> list[str]:
        names = self.order or tuple(f.name for f in fields(self) if f.name != "order")
        return [k for k in names if getattr(self, k) is not None]

    def values(self) -> list[Any]:
        return [getattr(self, k) for k in self.keys()]

    def items(self) -> list[tuple[str, Any]]:
        return [(k, getattr(self, k)) for k in self.keys()]

    def to_tuple(self) -> tuple[Any, ...]:
        """The non-None fields in ``transformers``' order (what ``return_dict=False`` gives)."""
        return tuple(self.values())

    def __getitem__(self, key: str | int | slice) -> Any:
        if isinstance(key, str):
            if key not in _OUTPUT_KEYS:
                raise KeyError(key)
            return getattr(self, key)
        return self.to_tuple()[key]

    def __iter__(self):
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def __contains__(self, key: object) -> bool:
        return key in self.keys()


_OUTPUT_KEYS = frozenset(f.name for f in fields(ModelOutput) if f.name != "order") | {"decoder_hidden_states"}


def _output_order(backbone: Backbone, kind: str | None) -> tuple[str, ...]:
    """Field order of the transformers output class a model of this backbone and head returns
    (``BaseModelOutputWithPooling``, ``CausalLMOutputWithPast``, ``Seq2SeqLMOutput``,
    ``QuestionAnsweringModelOutput``, ...): encoder-decoders, decoders (families that continue
    text) and encoders (the rest)."""
    seq2seq_tail = ("past_key_values", "decoder_hidden_states", "encoder_last_hidden_state", "encoder_hidden_states")
    if kind is None:  # the base model
        if backbone.is_encoder_decoder:
            return ("last_hidden_state", *seq2seq_tail)
        if backbone.can_generate:
            return ("last_hidden_state", "past_key_values", "hidden_states")
        return ("last_hidden_state", "pooler_output", "hidden_states")
    main = ("loss", "start_logits", "end_logits") if kind == "span" else ("loss", "logits")
    if backbone.is_encoder_decoder:
        return (*main, *seq2seq_tail)
    return (*main, "past_key_values", "hidden_states")


class TransferModel(nn.Module):
    """Backbone (encoder, decoder or encoder-decoder) + a ModuleDict of heads."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        config.validate()
        self.config = config
        #: defaults of :meth:`generate` (a GenerationConfig), from a ``generation_config.json``
        #: beside the weights; saved with the model. None = the library defaults.
        self.generation_config = None
        self.backbone = build_backbone(config)
        self.heads = nn.ModuleDict()
        for name, settings in config.heads.items():
            self.add_head(name, **(settings or {}))
        self.apply(self._init_weights)
        self.backbone.init_weights()  # the family's own rules (GPT-2's scaled residual projections)

    # ------------------------------------------------------------------ construction
    def add_head(self, name: str, **settings: Any) -> nn.Module:
        """Add (or replace) a head, recording its settings in ``config.heads``."""
        kind = settings.pop("type", name)
        if kind not in HEADS:
            raise ConfigError(f"unknown head {kind!r}; known heads: {', '.join(HEADS)}")
        head = HEADS[kind](self.config, self.backbone.get_input_embeddings(), **settings)
        head.apply(self._init_weights)
        self.heads[name] = head
        self.config.heads[name] = dict(settings, **({"type": kind} if kind != name else {}))
        return head

    def remove_head(self, name: str) -> None:
        del self.heads[name]
        self.config.heads.pop(name, None)

    def _init_weights(self, m: nn.Module) -> None:
        std = self.config.init_std
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, std)

    @property
    def family(self) -> Family | str:
        """``config.family``: a :class:`Family` for the built-in families, the registered name
        (a str) for others."""
        f = str(self.config.family)
        return Family(f) if f in Family._value2member_map_ else f

    @property
    def device(self) -> torch.device:
        """Where the weights are (the first parameter's device), as ``transformers``' ``model.device``."""
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The floating-point dtype of the weights (the first floating parameter's), as
        ``transformers``' ``model.dtype``: ``torch.bfloat16`` after ``model.to(torch.bfloat16)``."""
        return next((p.dtype for p in self.parameters() if p.is_floating_point()), torch.float32)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Trainable parameters (tied weights counted once); optionally without embeddings."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Embedding))
        return n

    def estimate_flops(self, seq_len: int, mode: str = "train", decoder_len: int | None = None,
                       n_predicted: float | None = None) -> float:
        """Matmul FLOPs of one sequence (train / forward / decode), as the backbone counts them;
        see :func:`transferlab.cost.estimate_flops`."""
        from .flops import family_flops

        return family_flops(self.config, seq_len, mode, decoder_len, n_predicted)

    def get_input_embeddings(self) -> nn.Embedding:
        """The backbone's token table (V, E), as ``transformers``' ``get_input_embeddings``."""
        return self.backbone.get_input_embeddings()

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.Tensor | None = None,  # (B, T)
        attention_mask: torch.Tensor | None = None,  # (B, T)
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,  # (B, T_dec)
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: Any = None,
        past_key_values: KVCache | None = None,
        use_cache: bool = False,
        output_hidden_states: bool = False,
        labels: torch.Tensor | None = None,
        head: str | None = None,
        inputs_embeds: torch.Tensor | None = None,
        return_dict: bool = True,
        start_positions: torch.Tensor | None = None,  # (B,) span head
        end_positions: torch.Tensor | None = None,  # (B,)
    ) -> ModelOutput | tuple:
        """Run the backbone and one head (``head``, default the first in ``config.heads``).

        With ``labels`` a loss is returned too, as in ``transformers``: token-level cross-entropy
        (-100 ignored; decoders shift by one), sequence cross-entropy, or MSE for one label. A
        span (QA) head also returns ``start_logits``/``end_logits`` (B, T) and takes
        ``start_positions``/``end_positions`` for its loss (the mean of the two cross-entropies;
        positions outside the sequence are ignored), as ``*ForQuestionAnswering`` does.
        ``return_dict=False`` returns ``ModelOutput.to_tuple()``: the non-None fields in
        ``transformers``' order.
        """
        if decoder_input_ids is None and labels is not None and self.config.is_encoder_decoder:
            if self.config.decoder_start_token_id < 0:
                raise ConfigError("model.decoder_start_token_id is not set: needed to shift labels into "
                                  "decoder inputs (BART uses eos, T5 pad)")
            decoder_input_ids = shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)
        out: BackboneOutput = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
            position_ids=position_ids, decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask, encoder_outputs=encoder_outputs,
            past_key_values=past_key_values, use_cache=use_cache,
            output_hidden_states=output_hidden_states, inputs_embeds=inputs_embeds,
        )
        logits = loss = start = end = kind = None
        name = head or next(iter(self.heads), None)
        if name is not None:
            kind = self.config.heads.get(name, {}).get("type", name)
            logits = self.run_head(name, out, attention_mask if not self.config.is_encoder_decoder else decoder_attention_mask)
            if kind == "span":  # (B, T, 2) -> two (B, T), as transformers' QA models split them
                start, end = (t.squeeze(-1).contiguous() for t in logits.split(1, dim=-1))
                if start_positions is not None and end_positions is not None:
                    loss = _span_loss(start, end, start_positions, end_positions)
            if labels is not None and loss is None:
                loss = self._loss(name, logits, labels)
        result = ModelOutput(
            logits=logits, loss=loss, last_hidden_state=out.last_hidden_state,
            hidden_states=out.hidden_states, pooler_output=out.pooler_output,
            encoder_last_hidden_state=out.encoder_last_hidden_state,
            encoder_hidden_states=out.encoder_hidden_states, past_key_values=out.past_key_values,
            start_logits=start, end_logits=end, order=_output_order(self.backbone, kind),
        )
        return result if return_dict else result.to_tuple()

    def run_head(self, name: str, out: BackboneOutput, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Apply head ``name`` to a backbone output (pooling first for sequence-level heads)."""
        head = self.heads[name]
        kind = self.config.heads.get(name, {}).get("type", name)
        if kind in POOLED_HEADS:
            how = getattr(head, "pooling", "cls")
            return head(pool(self.config, out.last_hidden_state, attention_mask, how, out.pooler_output))
        return head(out.last_hidden_state)

    def _loss(self, name: str, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        kind = self.config.heads.get(name, {}).get("type", name)
        if kind == "classification" and logits.shape[-1] == 1:
            return F.mse_loss(logits.squeeze(-1).float(), labels.float())
        # the one LM cross-entropy (also token and sequence heads: -100 ignored, fp32)
        return lm_cross_entropy(logits, labels, shift=kind == "lm" and self.config.is_causal)

    # ------------------------------------------------------------------ generation
    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> "TransferModel":
        """``TransferModel.from_pretrained(path, ...)``: the same as :func:`from_pretrained` (our folders).

        Args:
            path: a folder written by :meth:`save_pretrained`.
            **kwargs: ``device``, ``dtype``, ``torch_dtype`` and config overrides.

        Returns:
            The model in eval mode.
        """
        return from_pretrained(path, **kwargs)

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        """Generate token ids; see :func:`transferlab.generation.generate`."""
        from ..generation import generate

        return generate(self, input_ids, attention_mask=attention_mask, **kwargs)

    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, save_directory: str | Path, extra_config: dict | None = None) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (+ ``generation_config.json`` when the
        model has generation defaults) into a directory, each file atomically.

        Files that already exist in ``save_directory`` but are not ours (a tokenizer, logs) are
        kept; the two model files are each replaced atomically, weights first.
        """
        from safetensors.torch import save_file

        from ..utils import atomic_write_text

        d = Path(save_directory)
        d.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        tmp = d / f".{WEIGHTS_NAME}.tmp"
        save_file(state, str(tmp), metadata={"format": "pt", "library": "transferlab"})
        tmp.replace(d / WEIGHTS_NAME)
        cfg = {"transferlab_version": __version__, **self.config.to_dict(), **(extra_config or {})}
        atomic_write_text(d / CONFIG_NAME, json.dumps(cfg, indent=2) + "\n")
        from ..generation import save_generation_config

        save_generation_config(self.generation_config, d)
        return d


def _span_loss(start: torch.Tensor, end: torch.Tensor, start_positions: torch.Tensor,
               end_positions: torch.Tensor) -> torch.Tensor:
    """transformers' QA loss: mean of the start and end cross-entropies over positions (B, T);
    gold positions outside [0, T) are clamped to T and ignored (answers cut off by truncation)."""
    T = start.shape[1]
    sp = start_positions.reshape(-1).to(start.device).clamp(0, T)
    ep = end_positions.reshape(-1).to(start.device).clamp(0, T)
    return (F.cross_entropy(start.float(), sp, ignore_index=T) + F.cross_entropy(end.float(), ep, ignore_index=T)) / 2


def build_model(config: ModelConfig | str, **overrides: Any) -> TransferModel:
    """A freshly initialised model from a config or a preset name (+ field overrides)."""
    if isinstance(config, str):
        config = get_preset(config, **overrides)
    elif overrides:
        config = config.replace(**overrides)
    return TransferModel(config)


def read_config(path: str | Path) -> dict[str, Any]:
    p = Path(path) / CONFIG_NAME
    if not p.is_file():
        raise CheckpointError(f"{Path(path)}: no {CONFIG_NAME} (not a model directory)")
    from ..config import read_json

    return read_json(p, dict, CONFIG_NAME, CheckpointError)


def from_pretrained(path: str | Path, device: str | torch.device | None = None,
                    dtype: torch.dtype | str | None = None, torch_dtype: torch.dtype | str | None = None,
                    **overrides: Any) -> TransferModel:
    """Load a model directory written by ``save_pretrained``.

    ``overrides`` are config fields applied before the model is
    built (``dropout=0.0``, ``attn_impl="math"``). Family and heads come from ``config.json``.
    Tensors are checked against the config: missing, unexpected or wrongly shaped tensors raise
    :class:`CheckpointError` naming them. The model comes back in eval mode (dropout off), as
    with ``transformers``; call ``.train()`` to fine-tune it.

    ``dtype`` (``torch_dtype`` is accepted as its older ``transformers`` name): the weights'
    floating-point type, ``torch.bfloat16`` / ``"bfloat16"`` / ``"bf16"`` / ``torch.float16`` /
    ``torch.float32``, or ``"auto"`` for the dtype the checkpoint was saved in (``config.json``'s
    ``dtype``/``torch_dtype``, else its tensors'). Default float32, whatever the file holds.
    A ``generation_config.json`` beside the weights becomes ``model.generation_config``: the
    defaults of ``model.generate`` (see :mod:`transferlab.generation`).

    Args:
        path: our model folder.
        device: where to put the model (None: leave it on the CPU).
        dtype: the weights' dtype (see above; None: float32).
        torch_dtype: the older ``transformers`` name of ``dtype``.
        **overrides: model config fields set before the modules are built.

    Returns:
        The model in eval mode.

    Raises:
        CheckpointError: not our folder (a ``transformers`` folder or ``builtin:NAME`` go to
            :func:`transferlab.from_pretrained`, the one loader), or tensors that do not fit.
    """
    want = resolve_load_dtype(dtype, torch_dtype)
    if str(path).startswith("builtin:"):
        raise CheckpointError(f"{path}: a built-in model; load it with transferlab.from_pretrained({str(path)!r})")
    raw = read_config(path)
    if "model_type" in raw and "transferlab_version" not in raw:
        raise CheckpointError(f"{Path(path) / CONFIG_NAME}: a transformers folder (model_type "
                              f"{raw['model_type']!r}); load it with transferlab.from_pretrained")
    known = {f for f in ModelConfig.__dataclass_fields__}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"unknown model field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    # overrides (dropout, attn_impl, ...) go into the config *before* the modules are built
    from ..config import in_file

    with in_file(Path(path) / CONFIG_NAME):
        cfg = ModelConfig.from_dict({**{k: v for k, v in raw.items() if k in known}, **overrides})
    model = TransferModel(cfg)
    load_weights(model, Path(path) / WEIGHTS_NAME)
    from ..generation import load_generation_config

    model.generation_config = load_generation_config(path)
    model.eval()  # as transformers does: inference right away, training loops call .train()
    if want == "auto":
        want = checkpoint_dtype(Path(path), raw)
    if device is not None or want is not None:
        model = model.to(device=device, dtype=want)
    return model


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}


def resolve_load_dtype(dtype: Any, torch_dtype: Any) -> torch.dtype | str | None:
    """``dtype=`` / ``torch_dtype=`` of the loaders as a torch dtype, "auto" or None.

    Args:
        dtype: ``torch.float32``/``bfloat16``/``float16``, one of their names, ``"auto"`` or None.
        torch_dtype: the older ``transformers`` name of ``dtype`` (must agree when both are given).

    Returns:
        The torch dtype, ``"auto"`` (the checkpoint's own: :func:`checkpoint_dtype`) or None.

    Raises:
        ConfigError: an unknown dtype, or two that disagree.
    """
    if torch_dtype is not None:
        if dtype is not None and dtype != torch_dtype:
            raise ConfigError(f"from_pretrained: dtype={dtype!r} and torch_dtype={torch_dtype!r} disagree; "
                              "pass one (torch_dtype is the older name of dtype)")
        dtype = torch_dtype
    if dtype is None or dtype == "auto":
        return dtype
    if isinstance(dtype, str):
        name = dtype.removeprefix("torch.")
        if name in _DTYPES:
            return _DTYPES[name]
    elif isinstance(dtype, torch.dtype) and dtype in _DTYPES.values():
        return dtype
    raise ConfigError(f"from_pretrained: dtype must be torch.float32, torch.bfloat16, torch.float16 (or their names) "
                      f"or 'auto', got {dtype!r}")


def checkpoint_dtype(d: Path, raw: dict[str, Any]) -> torch.dtype:
    """The floating dtype a checkpoint was saved in, for ``dtype="auto"``.

    ``config.json``'s ``dtype`` (transformers 5) or ``torch_dtype`` (4.x), else the first floating
    tensor of the weights file's header (nothing else is read); float32 when neither says.

    Args:
        d: the model folder.
        raw: its ``config.json``.

    Returns:
        The torch dtype.
    """
    for key in ("dtype", "torch_dtype"):
        v = raw.get(key)
        if isinstance(v, str) and v.removeprefix("torch.") in _DTYPES:
            return _DTYPES[v.removeprefix("torch.")]
    file = d / WEIGHTS_NAME
    index = d / (WEIGHTS_NAME + ".index.json")
    if not file.is_file() and index.is_file():
        try:  # a sharded checkpoint: the first shard named by the index, if it is a plain file name here
            first = next(iter(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}).values()), "")
        except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
            first = ""
        file = d / first if isinstance(first, str) and first and Path(first).name == first else file
    if file.is_file():
        from safetensors import safe_open

        try:
            with safe_open(str(file), framework="pt") as f:
                for k in f.keys():
                    name = f.get_slice(k).get_dtype()  # "F32", "BF16", "F16", "I64", ...
                    found = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}.get(name)
                    if found is not None:
                        return found
        except Exception:  # unreadable header: the load above would have said so already
            pass
    return torch.float32


def load_weights(model: nn.Module, file: Path, strict: bool = True) -> None:
    """Load a safetensors file into ``model`` with a clear error on any mismatch."""
    from safetensors.torch import load_file

    if not Path(file).is_file():
        raise CheckpointError(f"{file}: weights file not found")
    try:
        state = load_file(str(file))
    except Exception as e:  # safetensors raises on truncated / corrupt files
        raise CheckpointError(f"{file}: not a readable safetensors file ({e})") from None
    check_state_dict(model, state, str(file), strict=strict)
    model.load_state_dict(state, strict=strict)


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], where: str, strict: bool = True) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs config {tuple(expected[k].shape)}"
              for k in expected if k in state and state[k].shape != expected[k].shape]
    problems = []
    if shapes:
        problems.append("shape mismatch " + "; ".join(shapes[:3]) + (" ..." if len(shapes) > 3 else ""))
    if strict and missing:
        problems.append(f"missing {len(missing)} tensor(s) e.g. {', '.join(missing[:3])}")
    if strict and unexpected:
        problems.append(f"unexpected {len(unexpected)} tensor(s) e.g. {', '.join(unexpected[:3])}")
    if problems:
        raise CheckpointError(f"{where}: tensors do not match config.json: " + "; ".join(problems))
