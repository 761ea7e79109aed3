"""AWD-LSTM (Merity et al., 2017), the language model ULMFiT fine-tunes (Howard & Ruder, 2018).

Token table (V, E) -> embedding dropout (whole words) -> locked dropout -> ``n_layers`` LSTM
layers with DropConnect on their hidden-to-hidden matrices (``E -> H -> ... -> H -> E``: the
last layer's hidden size is the embedding size, so the LM head can be tied to the token table)
with locked dropout between them -> locked output dropout. ``d_model`` is E, the width heads
read; ``family_options.hidden_size`` is H (1152 in the papers for E = 400).

Generation keeps each layer's ``(h, c)`` as the decode state (:class:`AWDState`), so
``generate`` (greedy, sampling, beam search) runs through the common ``new_cache``/``decode``
contract. Layer groups are ``[embeddings, layer 1, ..., layer L, []]``: discriminative learning
rates and gradual unfreezing treat each LSTM layer as transformers treat a block.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from ..config import COUNT, FRACTION, Range
from ..errors import ConfigError
from .backbone import Backbone, register_family
from .families import BackboneOutput
from .lstm import LockedDropout, LSTMState, WeightDropLSTM, embedding_dropout, flip_rows


@dataclass
class AWDLSTMOptions:
    """AWD-LSTM's own settings (``model.family_options``); dropout defaults are fastai's."""

    hidden_size: int = 1152
    """Hidden size H of every LSTM layer but the last (whose hidden size is d_model, for tying)."""
    embed_p: float = 0.1
    """Embedding dropout: probability of dropping a whole word of the token table."""
    input_p: float = 0.6
    """Locked dropout on the embeddings (the first layer's input)."""
    weight_p: float = 0.5
    """DropConnect on each layer's hidden-to-hidden matrix (one mask per forward)."""
    hidden_p: float = 0.2
    """Locked dropout between LSTM layers."""
    output_p: float = 0.1
    """Locked dropout on the last layer's output (what the heads read)."""
    backwards: bool = False
    """Read each sequence right to left (ULMFiT's backward model): the real tokens of every
    (right-padded) row are reversed before the first layer and the states come out in reading
    order, so pooling's last state has read the whole text. ``clm`` trains it as a backward LM."""

    RANGES: typing.ClassVar[dict[str, Range]] = {
        "hidden_size": COUNT, "embed_p": FRACTION, "input_p": FRACTION, "weight_p": FRACTION,
        "hidden_p": FRACTION, "output_p": FRACTION,
    }

    def validate(self) -> None:
        """Nothing beyond the ranges (checked by the config)."""


class AWDState:
    """Decode state: every layer's ``(h, c)`` (each (1, B, H_l)) and the positions consumed."""

    def __init__(self, hc: list[LSTMState]):
        self.hc = hc
        self.seq_len = 0

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows ``index`` (B',) in this order (beam search)."""
        self.hc = [tuple(t.index_select(1, index.to(t.device)) for t in s) for s in self.hc]  # type: ignore[misc]


def layer_sizes(cfg: Any) -> list[tuple[int, int]]:
    """``(input, hidden)`` width of each LSTM layer: ``E -> H -> ... -> H -> E``.

    Args:
        cfg: a ModelConfig of the family.

    Returns:
        One pair per layer, bottom-up.
    """
    E, H, L = cfg.d_model, cfg.family_options.hidden_size, cfg.n_layers
    return [(E if i == 0 else H, E if i == L - 1 else H) for i in range(L)]


class AWDLSTM(Backbone):
    """The AWD-LSTM language model body; a causal family (``clm`` and ``generate`` accept it)."""

    can_generate = True

    def __init__(self, cfg: Any):
        super().__init__()
        self.config = cfg
        o = cfg.family_options
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(WeightDropLSTM(i, h, o.weight_p) for i, h in layer_sizes(cfg))
        self.input_drop = LockedDropout(o.input_p)
        self.hidden_drop = LockedDropout(o.hidden_p)
        self.output_drop = LockedDropout(o.output_p)

    # ------------------------------------------------------------------ forward
    def _run(self, ids: torch.Tensor, state: list[LSTMState] | None,
             keep: torch.Tensor | None = None) -> tuple[list[torch.Tensor], list[LSTMState]]:
        """Embeddings and every layer's output (before dropout) plus the final states.

        ``keep`` (B, T) bool: positions whose input advances the state (False: left padding of
        a prompt, where the state must stay as it was); runs step by step when given.
        """
        x = embedding_dropout(self.embed_tokens, ids, self.config.family_options.embed_p, self.training)
        outs, new_state = [x], []
        h = self.input_drop(x)  # (B, T, E)
        if keep is not None:
            return self._run_masked(h, state, keep, outs)
        for i, layer in enumerate(self.layers):
            y, s = layer(h, state[i] if state is not None else None)  # (B, T, H_i)
            outs.append(y)
            new_state.append(s)
            h = self.hidden_drop(y) if i < len(self.layers) - 1 else y
        return outs, new_state

    def _run_masked(self, h: torch.Tensor, state: list[LSTMState] | None, keep: torch.Tensor,
                    outs: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[LSTMState]]:
        """Step-by-step run that holds each row's state where ``keep`` is False (B, T)."""
        B, T = keep.shape
        if state is None:
            state = [(h.new_zeros(1, B, hs), h.new_zeros(1, B, hs)) for _, hs in layer_sizes(self.config)]
        ys: list[list[torch.Tensor]] = [[] for _ in self.layers]
        for t in range(T):
            x_t, k = h[:, t:t + 1], keep[:, t].view(1, B, 1)
            for i, layer in enumerate(self.layers):
                y, (hn, cn) = layer(x_t, state[i])  # (B, 1, H_i)
                state[i] = (torch.where(k, hn, state[i][0]), torch.where(k, cn, state[i][1]))
                ys[i].append(y)
                x_t = self.hidden_drop(y) if i < len(self.layers) - 1 else y
        outs.extend(torch.cat(y, 1) for y in ys)
        return outs, state

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                output_hidden_states: bool = False, **_unused: Any) -> BackboneOutput:
        """Hidden states (B, T, E) of ``input_ids`` (B, T).

        Right padding only (the classifier's batches): a causal LSTM's states at real positions
        never see the padding after them, and pooling masks it.
        """
        if self.config.family_options.backwards:
            input_ids = flip_rows(input_ids, attention_mask)  # states in reading order (right to left)
        outs, _ = self._run(input_ids, None)
        return BackboneOutput(self.output_drop(outs[-1]), self._hidden_states(outs) if output_hidden_states else None)

    def _hidden_states(self, outs: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        # feature extraction stacks the states, so only those of width d_model are exposed
        return tuple(o for o in outs if o.shape[-1] == self.config.d_model)

    @property
    def num_hidden_states(self) -> int:
        """Embeddings plus each layer of width d_model (every layer when hidden_size == d_model,
        else the last one only)."""
        return 1 + sum(h == self.config.d_model for _, h in layer_sizes(self.config))

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    # ------------------------------------------------------------------ training
    def layer_groups(self) -> list[list[nn.Parameter]]:
        """``[embeddings, layer 1, ..., layer L, []]`` (ULMFiT's groups; the heads sit on top)."""
        return [list(self.embed_tokens.parameters())] + [list(m.parameters()) for m in self.layers] + [[]]

    def init_weights(self) -> None:
        """AWD-LSTM's initialisation: token table uniform in +-0.1, LSTMs as ``nn.LSTM``."""
        nn.init.uniform_(self.embed_tokens.weight, -0.1, 0.1)
        for layer in self.layers:
            layer.reset_parameters()

    def set_dropout(self, hidden: float | None = None, attention: float | None = None) -> None:
        """Fine-tuning's ``dropout`` sets the locked dropout between layers and on the output
        (``hidden_p``, ``output_p``); the family has no attention dropout.

        Args:
            hidden: the new ``hidden_p`` and ``output_p`` (None: keep).
            attention: must be None.
        """
        if attention is not None:
            raise ConfigError(f"family {self.family!r} has no attention dropout")
        if hidden is not None:
            self.hidden_drop.p = self.output_drop.p = float(hidden)
            self.config.family_options = dataclasses.replace(self.config.family_options, hidden_p=float(hidden),
                                                             output_p=float(hidden))

    @classmethod
    def estimate_flops(cls, cfg: Any, seq_len: int, mode: str = "train", decoder_len: int | None = None,
                       n_predicted: float | None = None) -> float:
        """Matmul FLOPs of one sequence: per token and layer the four gates' input and
        hidden products ``4 H (I + H)`` multiply-accumulates, plus the heads; 2 FLOPs per MAC,
        training = 3 x forward (element-wise gate maths left out, as FlopCounterMode does)."""
        from .heads import head_macs_of

        rows = 1 if mode == "decode" else seq_len
        pred = rows if n_predicted is None else n_predicted
        macs = rows * sum(4 * h * (i + h) for i, h in layer_sizes(cfg)) + head_macs_of(cfg, rows, pred)
        return (6.0 if mode == "train" else 2.0) * macs

    # ------------------------------------------------------------------ decoding
    def new_cache(self, batch: int, capacity: int, dtype: torch.dtype, device: torch.device,
                  zeros: bool = False) -> AWDState:
        """Zero ``(h, c)`` for every layer; ``capacity`` does not matter to a recurrent state."""
        if self.config.family_options.backwards:
            raise ConfigError("generate: this awd-lstm reads backwards (family_options.backwards=true), "
                              "so it predicts the previous token and does not continue text")
        return AWDState([(torch.zeros(1, batch, h, dtype=dtype, device=device),
                          torch.zeros(1, batch, h, dtype=dtype, device=device)) for _, h in layer_sizes(self.config)])

    def decode(self, ids: torch.Tensor, mask: torch.Tensor | None, positions: torch.Tensor | None,
               cache: AWDState | None, memory: torch.Tensor | None = None,
               memory_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states (B, T, E) of ``ids`` (B, T) after the state in ``cache``, which is
        advanced in place; left padding in ``mask`` (B, past + T) leaves a row's state untouched."""
        keep = None
        if mask is not None:
            chunk = mask[:, -ids.shape[1]:].bool()
            keep = None if bool(chunk.all()) else chunk
        state = list(cache.hc) if cache is not None else None
        outs, new_state = self._run(ids, state, keep)
        if cache is not None:
            cache.hc, cache.seq_len = new_state, cache.seq_len + ids.shape[1]
        return self.output_drop(outs[-1])


register_family("awd-lstm", AWDLSTM, AWDLSTMOptions)
