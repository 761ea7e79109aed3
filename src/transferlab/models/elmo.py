"""ELMo (Peters et al., 2018): a bidirectional LSTM language model whose layers are the features.

Two LSTM stacks read the same token representation, one left to right and one right to left,
and both predict through one shared softmax (the ``lm`` head, :class:`BiLMSoftmax`): the forward
stack's state at ``t`` predicts token ``t + 1``, the backward stack's predicts ``t - 1``
(objective ``bilm``). As in AllenNLP's ``ElmoLstm``:

* the token representation comes from an embedding table or, as in the paper, from a character
  CNN (:class:`CharCNN`: character embeddings, filters of several widths max-pooled over the
  word, highway layers, a projection). The characters of every token id are a table stored in
  the model (the ``backbone.char_table`` buffer, saved in ``model.safetensors``), built from the
  tokenizer's vocabulary by :func:`token_characters` so that a saved folder needs no tokenizer to
  run;
* each direction is ``lstm_layers`` single-layer ``torch.nn.LSTM`` s, the second and later ones
  with a residual connection around them; with ``projection`` each is an LSTMP (cells of
  ``cell_size`` projected to ``d_model / 2``, ``nn.LSTM(proj_size=...)``);
* the hidden states are the ``L + 1`` layers, each ``[forward; backward]`` of width ``d_model``:
  layer 0 is the token representation twice (``[x; x]``), then one per LSTM layer. Feature
  extraction's scalar mix (``gamma * sum_j softmax(s)_j h_j``, ELMo eq. 1) mixes them.

Padding: each row's real tokens are gathered to the front (the backward stack's in reverse order)
before the LSTMs run and scattered back after, so padding on either side never reaches a real
position's state in either direction.

Not in this port: the cell and projection clipping of the original LSTMs (``nn.LSTM`` has none)
and the <S>/</S> sentence markers (a window's ends predict nothing instead).
"""

from __future__ import annotations

import typing
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import COUNT, NONNEG_INT, Range
from ..errors import ConfigError
from .backbone import Backbone, backbone_of, register_family
from .families import BackboneOutput
from .heads import HEADS

#: character ids: 0 padding, then markers, then the 256 byte values
CHAR_PAD, BOW, EOW, BOC, SPECIAL = 0, 1, 2, 3, 4
_BYTE0 = 5
N_CHARS = _BYTE0 + 256

TOKEN_INPUTS = ("embedding", "chars")

# nn.LSTM(proj_size=...) on CPU says once per process that oneDNN has no LSTMP kernel and it runs
# ATen's own; that is expected here, not something a user can act on
warnings.filterwarnings("ignore", message="LSTM with projections is not supported with oneDNN", category=UserWarning)


@dataclass
class ElmoOptions:
    """The ELMo family's own settings (``model.family_options`` in config.json)."""

    lstm_layers: int = 2
    """LSTM layers per direction (the paper: 2)."""
    projection: bool = True
    """LSTMP: cells of ``cell_size`` projected to ``d_model / 2`` (the paper: 4096 -> 512); false: plain
    LSTMs with ``d_model / 2`` cells."""
    cell_size: int = 0
    """LSTM cells per direction with ``projection``; 0 = 4 x d_model / 2."""
    residual: bool = True
    """Residual connections around every LSTM layer but the first."""
    token_input: str = "embedding"
    """``embedding``: a token table (V, d_model / 2); ``chars``: the character CNN with highway layers."""
    char_dim: int = 16
    """chars: character embedding width."""
    max_chars: int = 50
    """chars: characters per token, word-boundary markers included (longer tokens are cut)."""
    filters: list[list[int]] = field(default_factory=lambda: [[1, 32], [2, 32], [3, 64], [4, 128], [5, 256],
                                                              [6, 512], [7, 1024]])
    """chars: ``[width, number]`` of each convolution (the paper's 2048 filters)."""
    highway_layers: int = 2
    """chars: highway layers after the max-pooled filters."""

    RANGES: typing.ClassVar[dict[str, Range]] = {
        "lstm_layers": COUNT, "cell_size": NONNEG_INT, "char_dim": COUNT, "max_chars": Range(int, ge=3),
        "highway_layers": NONNEG_INT,
    }

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the field when the settings do not fit together."""
        if self.token_input not in TOKEN_INPUTS:
            raise ConfigError(f"model.family_options.token_input: expected one of {', '.join(TOKEN_INPUTS)}, "
                              f"got {self.token_input!r}")
        if not self.filters or any(len(f) != 2 or not 1 <= f[0] <= self.max_chars or f[1] < 1 for f in self.filters):
            raise ConfigError(f"model.family_options.filters: expected [width, number] pairs with 1 <= width <= "
                              f"max_chars={self.max_chars} and number >= 1, got {self.filters!r}")

    @property
    def n_filters(self) -> int:
        """Width of the max-pooled convolution output (the highway layers' width)."""
        return sum(n for _, n in self.filters)


def _sizes(cfg: Any) -> tuple[int, int]:
    """(P, H): the per-direction output width d_model / 2 and the LSTM cell size."""
    opts = cfg.family_options
    if cfg.d_model % 2:
        raise ConfigError(f"model.d_model={cfg.d_model}: an elmo model needs an even d_model "
                          "(each direction gives d_model / 2)")
    P = cfg.d_model // 2
    if not opts.projection:
        if opts.cell_size not in (0, P):
            raise ConfigError(f"model.family_options.cell_size={opts.cell_size}: without projection the cells are "
                              f"d_model / 2 = {P}; set cell_size=0 or projection=true")
        return P, P
    H = opts.cell_size or 4 * P
    if H <= P:
        raise ConfigError(f"model.family_options.cell_size={H} must be larger than d_model / 2 = {P} with "
                          "projection (it projects the cells down to d_model / 2)")
    return P, H


# ---------------------------------------------------------------------------------- characters
def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable stand-in character -> byte (the inverse of its ``bytes_to_unicode``)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def _pieces(token: str, kind: str | None, decoder: dict[str, int]) -> tuple[bool, bytes]:
    """(starts a word, the token's bytes without its tokenizer's word markers)."""
    if kind == "wordpiece":
        return (False, token[2:].encode()) if token.startswith("##") else (True, token.encode())
    if kind == "bpe":  # byte-level: every character stands for one byte; a leading space starts a word
        raw = bytes(decoder.get(ch, ord("?") if ord(ch) > 255 else ord(ch)) for ch in token)
        return (True, raw[1:]) if raw[:1] == b" " else (False, raw)
    if kind == "unigram":
        return (True, token[1:].encode()) if token.startswith("\u2581") else (False, token.encode())
    return True, token.encode()


def token_characters(tokens: Sequence[str], max_chars: int, kind: str | None = None,
                     special_ids: Sequence[int] = (), vocab_size: int | None = None) -> np.ndarray:
    """The character ids of every token: the table the character CNN reads.

    Each row is ``[BOW or BOC, bytes..., EOW]`` padded with 0: word-initial pieces start with
    ``BOW`` and continuation pieces (``##ing``, a byte-level piece without its leading space, a
    unigram piece without ``▁``) with ``BOC``, so ``ing`` and ``##ing`` stay distinct once their
    markers are stripped; special tokens are ``[BOW, SPECIAL, their text..., EOW]``. Tokens longer
    than ``max_chars - 2`` bytes are cut.

    Args:
        tokens: the vocabulary in id order (``tokenizer.convert_ids_to_tokens(range(len(tok)))``).
        max_chars: characters per row (markers included).
        kind: the tokenizer kind (``wordpiece``, ``bpe`` = byte-level BPE, ``unigram``) or None
            (tokens are plain text).
        special_ids: ids of special tokens.
        vocab_size: rows of the table (>= ``len(tokens)``; rows past the vocabulary stay 0).

    Returns:
        ``(vocab_size, max_chars)`` int64 array.
    """
    V = len(tokens) if vocab_size is None else vocab_size
    if V < len(tokens):
        raise ConfigError(f"the tokenizer has {len(tokens)} tokens but model.vocab_size={V}")
    out = np.zeros((V, max_chars), dtype=np.int64)
    decoder = _byte_decoder()
    specials = {int(i) for i in special_ids}
    for i, tok in enumerate(tokens):
        if i in specials:
            head, body = [BOW, SPECIAL], tok.encode()
        else:
            word_start, body = _pieces(tok, kind, decoder)
            head = [BOW if word_start else BOC]
        body = body[: max_chars - len(head) - 1]
        row = head + [_BYTE0 + b for b in body] + [EOW]
        out[i, : len(row)] = row
    return out


def tokenizer_characters(tokenizer: Any, vocab_size: int, max_chars: int) -> np.ndarray:
    """:func:`token_characters` of a :class:`~transferlab.tokenizer.Tokenizer`'s vocabulary.

    Args:
        tokenizer: a tokenizer with ``convert_ids_to_tokens``, ``kind`` and ``all_special_ids``.
        vocab_size: the model's vocabulary size (rows).
        max_chars: characters per row.

    Returns:
        ``(vocab_size, max_chars)`` int64 array.
    """
    n = len(tokenizer)
    tokens = tokenizer.convert_ids_to_tokens(list(range(n)))
    return token_characters(tokens, max_chars, getattr(tokenizer, "kind", None),
                            list(getattr(tokenizer, "all_special_ids", None) or ()), vocab_size)


def set_token_characters(model: nn.Module, source: Any) -> bool:
    """Fill a char-input elmo model's character table from a tokenizer or a list of tokens.

    Args:
        model: a TransferModel (or its backbone) of family ``elmo``.
        source: a :class:`~transferlab.tokenizer.Tokenizer`, or the tokens in id order.

    Returns:
        True when the table was written; False for a model that reads a token table.
    """
    bb = backbone_of(model)
    if not isinstance(bb, ElmoBiLM) or bb.char_cnn is None:
        return False
    V, C = bb.char_table.shape
    if isinstance(source, (list, tuple)):
        table = token_characters(source, C, vocab_size=V)
    else:
        table = tokenizer_characters(source, V, C)
    with torch.no_grad():
        bb.char_table.copy_(torch.from_numpy(table))
    bb._chars_ready = True
    return True


class Highway(nn.Module):
    """Highway layers (Srivastava et al., 2015) as AllenNLP's: ``x = g * x + (1 - g) * relu(W_h x)``,
    ``g = sigmoid(W_g x)``, both halves from one ``Linear(F, 2F)``; gate biases start at 1 (carry)."""

    def __init__(self, dim: int, n_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(dim, 2 * dim) for _ in range(n_layers))

    def reset_gates(self) -> None:
        """Gate biases to 1: the layers start close to the identity (AllenNLP's init)."""
        with torch.no_grad():
            for layer in self.layers:
                layer.bias[layer.out_features // 2:].fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, F) -> (N, F)
        for layer in self.layers:
            nonlinear, gate = layer(x).chunk(2, dim=-1)
            g = torch.sigmoid(gate)
            x = g * x + (1 - g) * F.relu(nonlinear)
        return x


class CharCNN(nn.Module):
    """The paper's token representation: character embeddings -> convolutions of several widths,
    each max-pooled over the word and passed through a ReLU -> highway layers -> a projection."""

    def __init__(self, opts: ElmoOptions, out_dim: int):
        super().__init__()
        self.embed_chars = nn.Embedding(N_CHARS, opts.char_dim)
        self.convs = nn.ModuleList(nn.Conv1d(opts.char_dim, n, w) for w, n in opts.filters)
        self.highway = Highway(opts.n_filters, opts.highway_layers)
        self.proj = nn.Linear(opts.n_filters, out_dim)

    def forward(self, chars: torch.Tensor) -> torch.Tensor:  # (N, max_chars) -> (N, out_dim)
        x = self.embed_chars(chars).transpose(1, 2)  # (N, char_dim, max_chars)
        pooled = [F.relu(conv(x).amax(-1)) for conv in self.convs]  # each (N, n_w)
        return self.proj(self.highway(torch.cat(pooled, -1)))  # (N, F) -> (N, P)


class CharTokenTable(nn.Embedding):
    """``get_input_embeddings()`` of a char-input elmo: a read-only view with the token table's
    surface (``weight`` (V, P), ``forward(ids)``), computed by the character CNN. ``weight`` is a
    fresh snapshot on every access, not a parameter: writing into it changes nothing."""

    def __init__(self, backbone: "ElmoBiLM"):
        nn.Module.__init__(self)  # no parameter of its own: the CNN's are the backbone's
        self._owner = [backbone]  # a list: not a submodule (no second copy in the state dict)
        self.num_embeddings, self.embedding_dim = backbone.char_table.shape[0], backbone.config.d_model // 2
        self.padding_idx, self.max_norm, self.sparse = None, None, False

    @property
    def weight(self) -> torch.Tensor:  # type: ignore[override]
        bb = self._owner[0]
        with torch.no_grad():
            return torch.cat([bb.token_representation(ids) for ids in
                              torch.arange(self.num_embeddings, device=bb.char_table.device).split(4096)])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # (...) -> (..., P)
        return self._owner[0].token_representation(ids)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, from characters"


# ---------------------------------------------------------------------------------- the biLM
def _orders(mask: torch.Tensor | None, B: int, T: int, device: torch.device
            ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Per row, the positions each direction reads in order: real tokens first (forward: left to
    right; backward: right to left), then the padding. None where a plain read (forward) or a
    flip (backward) does the same, i.e. without padding. Returns (forward, backward), each (B, T)."""
    if mask is None or bool(mask.all()):
        return None, None
    pos = torch.arange(T, device=device).expand(B, T)
    real = mask.bool()
    fwd = torch.where(real, pos, pos + T).argsort(1)  # keys are distinct: the order is exact
    bwd = torch.where(real, T - 1 - pos, pos + T).argsort(1)
    return fwd, bwd


def _take(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``x[b, idx[b, t]]`` for (B, T, C) ``x`` and (B, T) ``idx``."""
    return x.gather(1, idx[..., None].expand(-1, -1, x.shape[-1]))


class ElmoBiLM(Backbone):
    """The biLM backbone: token representation -> forward and backward residual LSTM(P) stacks.

    ``last_hidden_state`` is ``[forward top; backward top]`` (B, T, d_model); the ``lm`` head
    (:class:`BiLMSoftmax`) reads each half. Not causal as a whole (the backward half has seen the
    future), so it does not generate and ``clm`` refuses it; ``bilm`` trains it.
    """

    can_generate = False
    default_pooling = "mean"  # no summary token, and both directions read every position

    def __init__(self, cfg: Any):
        super().__init__()
        self.config = cfg
        opts: ElmoOptions = cfg.family_options
        P, H = _sizes(cfg)
        for name, settings in (cfg.heads or {}).items():
            kind = (settings or {}).get("type", name)
            if kind == "lm":
                raise ConfigError(f"model.heads.{name}: an elmo model predicts tokens through its shared biLM "
                                  "softmax ({'type': 'bilm_softmax'}), trained with --objective bilm, the objective "
                                  "that fits family 'elmo'; a transformer LM head (mlm, clm, ...) does not fit it")
        self.embed_tokens: nn.Embedding | None = None
        self.char_cnn: CharCNN | None = None
        if opts.token_input == "chars":
            if cfg.tie_embeddings:
                raise ConfigError("model.tie_embeddings: a char-CNN elmo model has no token table to tie the softmax "
                                  "to; set model.tie_embeddings=false (or family_options.token_input=embedding)")
            self.char_cnn = CharCNN(opts, P)
            self.register_buffer("char_table", torch.zeros(cfg.vocab_size, opts.max_chars, dtype=torch.long))
            # kept out of the module tree: init, .apply() and parameter counts must not see a table
            object.__setattr__(self, "_table_view", CharTokenTable(self))
        else:
            self.embed_tokens = nn.Embedding(cfg.vocab_size, P)
        self._chars_ready = False

        def stack() -> nn.ModuleList:
            return nn.ModuleList(nn.LSTM(P, H, batch_first=True, proj_size=P if opts.projection else 0)
                                 for _ in range(opts.lstm_layers))

        self.forward_layers, self.backward_layers = stack(), stack()
        self.drop = nn.Dropout(cfg.dropout)

    # ------------------------------------------------------------------ input
    def token_representation(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The context-independent token vectors both directions read.

        Args:
            input_ids: token ids of any shape (...).

        Returns:
            (..., d_model / 2): the token table's rows, or the char CNN of each token's characters.

        Raises:
            ConfigError: a char-input model whose character table was never filled.
        """
        if self.char_cnn is None:
            return self.embed_tokens(input_ids)
        if not self._chars_ready:
            self._chars_ready = bool(self.char_table[:, 0].any())
            if not self._chars_ready:
                raise ConfigError("model.family_options.token_input=chars but the model has no characters: its "
                                  "char_table is empty; fill it with models.elmo.set_token_characters(model, tokenizer) "
                                  "(pre-training with objective bilm does this from the data's tokenizer)")
        chars = self.char_table[input_ids.reshape(-1)]  # (N, max_chars)
        return self.char_cnn(chars).reshape(*input_ids.shape, -1)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._chars_ready = False  # a loaded table is checked again on the next forward
        super()._load_from_state_dict(*args, **kwargs)

    # ------------------------------------------------------------------ forward
    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                output_hidden_states: bool = False, **_unused: Any) -> BackboneOutput:
        """Hidden states of ``input_ids`` (B, T); padding anywhere in ``attention_mask`` (B, T) is skipped.

        Returns:
            ``BackboneOutput``: ``last_hidden_state`` (B, T, d_model) = ``[forward; backward]`` of the
            top layer; with ``output_hidden_states`` the L + 1 layers, layer 0 = ``[x; x]``.
        """
        if input_ids is None:
            raise ConfigError("an elmo model reads input_ids (it has no inputs_embeds path)")
        B, T = input_ids.shape
        x = self.drop(self.token_representation(input_ids))  # (B, T, P)
        fwd_idx, bwd_idx = _orders(attention_mask, B, T, x.device)
        f = x if fwd_idx is None else _take(x, fwd_idx)  # (B, T, P) in each direction's reading order
        b = x.flip(1) if bwd_idx is None else _take(x, bwd_idx)
        residual = self.config.family_options.residual
        layers: list[tuple[torch.Tensor, torch.Tensor]] = []
        for i, (lf, lb) in enumerate(zip(self.forward_layers, self.backward_layers)):
            of, ob = self.drop(lf(f)[0]), self.drop(lb(b)[0])  # (B, T, P) each
            if residual and i > 0:
                of, ob = of + f, ob + b
            f, b = of, ob
            layers.append((f, b))

        def positions(f_: torch.Tensor, b_: torch.Tensor) -> torch.Tensor:  # back to token positions
            f_ = f_ if fwd_idx is None else _take(f_, fwd_idx.argsort(1))
            b_ = b_.flip(1) if bwd_idx is None else _take(b_, bwd_idx.argsort(1))
            return torch.cat([f_, b_], -1)  # (B, T, 2P)

        top = positions(*layers[-1])
        hidden = None
        if output_hidden_states:
            hidden = (torch.cat([x, x], -1),) + tuple(positions(a, c) for a, c in layers[:-1]) + (top,)
        return BackboneOutput(top, hidden)

    # ------------------------------------------------------------------ contract
    @property
    def num_hidden_states(self) -> int:
        return self.config.family_options.lstm_layers + 1  # token layer + one per LSTM layer

    def get_input_embeddings(self) -> nn.Embedding:
        """The token table (V, d_model / 2); for char input a read-only :class:`CharTokenTable`."""
        return self.embed_tokens if self.embed_tokens is not None else self._table_view

    def layer_groups(self) -> list[list[nn.Parameter]]:
        token = self.embed_tokens if self.embed_tokens is not None else self.char_cnn
        groups = [list(token.parameters())]
        for lf, lb in zip(self.forward_layers, self.backward_layers):
            groups.append(list(lf.parameters()) + list(lb.parameters()))
        return groups + [[]]

    def adapter_units(self) -> list[nn.Module]:
        return []  # LoRA wraps nn.Linear layers of attention blocks; this model has none

    def init_weights(self) -> None:
        """Forget-gate biases at 1 (remember by default) and highway gates carrying, as AllenNLP."""
        with torch.no_grad():
            for lstm in list(self.forward_layers) + list(self.backward_layers):
                H = lstm.hidden_size
                for name, p in lstm.named_parameters():
                    if name.startswith("bias_ih"):
                        p.zero_()
                        p[H:2 * H].fill_(1.0)  # gates i, f, g, o: f
                    elif name.startswith("bias_hh"):
                        p.zero_()
        if self.char_cnn is not None:
            self.char_cnn.highway.reset_gates()

    @classmethod
    def estimate_flops(cls, cfg: Any, seq_len: int, mode: str = "train", decoder_len: int | None = None,
                       n_predicted: float | None = None) -> float:
        """Matmul FLOPs of one sequence: char CNN (convolutions, highway, projection), every LSTM
        step of both directions (input, recurrent and projection matrices) and the heads; the
        softmax on ``n_predicted`` rows (default 2 per position: one per direction). Training is
        3 x forward (backward computes gradients of inputs and weights). Exact against
        ``FlopCounterMode`` on a cell-by-cell computation (``tests/models/test_elmo.py``).

        Args:
            cfg: an elmo ModelConfig.
            seq_len: tokens in the sequence (``decode``: one step is billed; the family does not decode).
            mode: ``train``, ``forward`` or ``decode``.
            decoder_len: must be None (not an encoder-decoder).
            n_predicted: rows that reach the softmax (``bilm``: 2 (T - 1) per full window).

        Returns:
            FLOPs as a float.
        """
        from .flops import head_macs

        if decoder_len is not None:
            raise ValueError("estimate_flops: decoder_len only applies to encoder-decoder models")
        opts: ElmoOptions = cfg.family_options
        P, H = _sizes(cfg)
        rec = P if opts.projection else H  # the recurrent state's width
        lstm = 4 * H * P + 4 * H * rec + (H * P if opts.projection else 0)  # per step, layer and direction
        token = 0
        if opts.token_input == "chars":
            Fw = opts.n_filters
            token = sum((opts.max_chars - w + 1) * w * opts.char_dim * n for w, n in opts.filters)
            token += opts.highway_layers * Fw * 2 * Fw + Fw * P
        rows = 1 if mode == "decode" else seq_len
        pred = 2 * rows if n_predicted is None else n_predicted
        macs = rows * (token + 2 * opts.lstm_layers * lstm)
        for name, settings in (cfg.heads or {}).items():
            if (settings or {}).get("type", name) == "bilm_softmax":
                macs += pred * P * cfg.vocab_size
        macs += head_macs(cfg, rows, pred)  # the other heads (classification, tagging, ...)
        flops = 2.0 * macs
        return 3.0 * flops if mode == "train" else flops


class BiLMSoftmax(nn.Module):
    """The softmax both directions share: (…, d_model / 2) -> (…, V), with a bias, tied to the token
    table when ``tie_embeddings`` (token input only). On a backbone output (…, d_model) =
    ``[forward; backward]`` it returns (…, 2, V): the forward state's next-token scores, then the
    backward state's previous-token scores. ``transform_hidden`` / ``output_weight`` / ``bias``
    are what the fused cross-entropy reads (:func:`~transferlab.objectives.losses.sparse_ce`)."""

    def __init__(self, cfg: Any, embed_tokens: nn.Embedding | None = None, **_: Any):
        super().__init__()
        self.width = cfg.d_model // 2
        self.tied = bool(cfg.tie_embeddings) and isinstance(embed_tokens, nn.Embedding) \
            and not isinstance(embed_tokens, CharTokenTable)
        self.embed = [embed_tokens]  # not registered twice
        self.weight = None if self.tied else nn.Parameter(torch.empty(cfg.vocab_size, self.width).normal_(0, cfg.init_std))
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size)) if cfg.lm_head_bias else None

    @property
    def output_weight(self) -> torch.Tensor:
        return self.embed[0].weight if self.tied else self.weight

    def transform_hidden(self, h: torch.Tensor) -> torch.Tensor:
        return h  # nothing before the vocabulary projection

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if h.shape[-1] == 2 * self.width:  # a backbone output: both directions' scores
            return torch.stack([F.linear(part, self.output_weight, self.bias) for part in h.chunk(2, -1)], -2)
        return F.linear(h, self.output_weight, self.bias)  # (..., P) -> (..., V)


HEADS.setdefault("bilm_softmax", BiLMSoftmax)
register_family("elmo", ElmoBiLM, ElmoOptions)
