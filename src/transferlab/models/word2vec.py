"""Global word vectors (word2vec): an embedding-only family, shallow pre-training.

The model is two tables of the tokenizer's vocabulary, as in Mikolov et al. (2013):

* ``embed_tokens`` (V, d) — the *input* vectors ``v_w`` (what ``word2vec`` saves, what features,
  fine-tuning and ``--init-embeddings`` read);
* ``context`` (V, d) — the *output* (context) vectors ``u_w`` the skip-gram / CBOW objective
  scores against (:mod:`transferlab.objectives.skipgram`).

The forward returns each token's vector, whatever its context: ``last_hidden_state[b, t] =
v[input_ids[b, t]]`` (B, T, d). A head on top therefore sees a bag of vectors (a mean-pooled
classification head is the classic bag-of-vectors classifier), and ``features`` gives one hidden
state. Initialisation follows ``word2vec.c``: input vectors uniform in ``±0.5 / d``, context
vectors zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn as nn

from ..errors import ConfigError
from .backbone import Backbone, register_family
from .families import BackboneOutput

#: the objective's defaults (``objectives.skipgram``), which the per-sequence FLOPs estimate
#: assumes when it cannot see the objective's settings
DEFAULT_WINDOW = 5
DEFAULT_NEGATIVES = 5


@dataclass
class Word2VecOptions:
    """The word2vec family's own settings (``model.family_options`` in config.json)."""

    init_range: float = 0.5
    """Input vectors start uniform in [-init_range / d, init_range / d] (word2vec.c: 0.5)."""
    features: str = "input"
    """What the forward returns per token: ``input`` (the input vectors v, as word2vec saves
    them) or ``sum`` (v + u, the input and context vectors summed, as GloVe reports)."""

    def validate(self) -> None:
        """ConfigError for a negative range or an unknown ``features``."""
        if self.init_range < 0:
            raise ConfigError(f"model.family_options.init_range must be >= 0, got {self.init_range}")
        if self.features not in ("input", "sum"):
            raise ConfigError(f"model.family_options.features must be input or sum, got {self.features!r}")


class Word2Vec(Backbone):
    """Input vectors (V, d) + context vectors (V, d); the forward looks tokens up (no context)."""

    #: the hidden state of a token does not depend on the others (``features neighbours`` shows
    #: global neighbours instead of contextual ones)
    contextual: ClassVar[bool] = False

    def __init__(self, cfg: Any):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)  # v: input vectors
        self.context = nn.Embedding(cfg.vocab_size, cfg.d_model)  # u: output (context) vectors
        self.drop = nn.Dropout(cfg.dropout)

    def init_weights(self) -> None:
        """word2vec.c's initialisation: v uniform in ``±init_range / d``, u zero."""
        r = float(self.config.family_options.init_range) / self.config.d_model
        with torch.no_grad():
            self.embed_tokens.weight.uniform_(-r, r)
            self.context.weight.zero_()

    def vectors(self) -> torch.Tensor:
        """The word vectors (V, d) the forward returns: v, or v + u with ``features=sum``."""
        w = self.embed_tokens.weight
        return w + self.context.weight if self.config.family_options.features == "sum" else w

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                output_hidden_states: bool = False, **_unused: Any) -> BackboneOutput:
        """Each token's vector (B, T, d); padding positions are zero (so sums over a row are
        sums over its real tokens)."""
        if input_ids is None:
            raise ConfigError("family 'word2vec' reads token ids (input_ids), not inputs_embeds")
        if self.config.family_options.features == "sum":
            x = self.embed_tokens(input_ids) + self.context(input_ids)  # (B, T, d)
        else:
            x = self.embed_tokens(input_ids)  # (B, T, d)
        if attention_mask is not None:
            x = x * attention_mask[..., None].to(x.dtype)
        x = self.drop(x)
        return BackboneOutput(x, (x,) if output_hidden_states else None)

    @property
    def num_hidden_states(self) -> int:
        return 1  # the token vectors: there are no layers above them

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def layer_groups(self) -> list[list[nn.Parameter]]:
        # the input table is the embedding group; the context table is the one "layer" above it
        # (it only serves the pre-training objective); nothing on top
        return [list(self.embed_tokens.parameters()), list(self.context.parameters()), []]

    @classmethod
    def estimate_flops(cls, cfg: Any, seq_len: int, mode: str = "train", decoder_len: int | None = None,
                       n_predicted: float | None = None) -> float:
        """Counted FLOPs of one sequence of ``seq_len`` tokens.

        ``train``: skip-gram with negative sampling scores each (center, context) pair with
        ``1 + k`` dot products of width d (2d FLOPs each), backward twice that; ``n_predicted``
        is the number of pairs when known, else ``seq_len * (W + 1)`` (a dynamic window uniform
        in 1..W gives W + 1 contexts per token on average) with the objective's default W and k.
        ``forward``/``decode``: a table lookup, no multiply-adds, plus the heads on top.

        Args:
            cfg: the ModelConfig.
            seq_len: tokens of the sequence.
            mode: ``train``, ``forward`` or ``decode``.
            decoder_len: unused (no decoder).
            n_predicted: (center, context) pairs of the sequence (train), or None.

        Returns:
            FLOPs as a float.
        """
        from .flops import head_macs

        rows = 1 if mode == "decode" else seq_len
        heads = 2.0 * head_macs(cfg, rows, rows) * (3.0 if mode == "train" else 1.0)
        if mode != "train":
            return heads
        pairs = seq_len * (DEFAULT_WINDOW + 1) if n_predicted is None else float(n_predicted)
        return pairs_flops(cfg.d_model, DEFAULT_NEGATIVES, pairs) + heads


def pairs_flops(d: int, negatives: int, pairs: float) -> float:
    """Training FLOPs of ``pairs`` scored rows: ``1 + negatives`` dot products of width ``d``
    each (2d FLOPs), forward + backward (3x), as ``FlopCounterMode`` counts the batched matmul.

    Args:
        d: vector width.
        negatives: noise words per row (k).
        pairs: scored rows ((center, context) pairs for skip-gram, centers for CBOW).

    Returns:
        FLOPs as a float.
    """
    return 6.0 * d * (1 + negatives) * float(pairs)


register_family("word2vec", Word2Vec, Word2VecOptions)
