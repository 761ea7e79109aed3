"""BERT's masked LM + next-sentence prediction (``nsp``, alias ``mlm+nsp``).

Dataset (:class:`~transferlab.objectives.datasets.SentencePairs`): documents are cut into chunks
of consecutive sentences (BERT's ``create_pretraining_data``: sentences are added until the chunk
reaches its target length, ``seq_len - 3`` or, with probability ``short_seq_prob``, a shorter
random one), each with a pre-drawn random-document continuation.

Collator, per pair (a loop over the batch, vectorised within each pair; the masking after it is
vectorised over the batch):

* A = the chunk's first ``k`` sentences, ``k`` uniform in ``[1, n-1]``;
* with probability ``random_next_prob`` (0.5) B is taken from the random document, as many
  sentences as fill the target length, label 1 ("random"); otherwise B is the rest of the chunk,
  label 0 ("is next"), as in ``transformers``' ``next_sentence_label``. A one-sentence chunk is
  split inside the sentence for an is-next pair (BERT would always make it a random pair, which
  biases the label rate), so the rate is exactly ``random_next_prob``;
* the pair is truncated to ``seq_len - 3`` tokens by trimming the longer side, one token at a
  time from the front or the back at random (BERT's ``truncate_seq_pair``, in closed form);
* ``[CLS] A [SEP] B [SEP]`` with ``token_type_ids`` 0 then 1, then BERT masking (:mod:`.mlm`).

Randomness is drawn per example (:mod:`.example_rng`): each pair's choices (random or next, the
split point, the truncation) come from the example's own generator and its masks from its own
stream, keyed by the seed and the example's global position; nothing is drawn per batch. So
accumulated micro-batches and ranks see exactly the pairs and masks of one large batch.

Loss: sparse MLM sum + ``nsp_weight * nsp_sum * N_mlm / N_pairs`` with ``n_targets = n_mlm``,
where ``N_mlm`` and ``N_pairs`` count the whole step (all micro-batches and ranks, the trainer's
``global_counts``), so ``loss_sum / N_mlm = mlm_mean + nsp_weight * nsp_mean`` over the step:
BERT's loss of the large batch (outside the trainer, one batch's own counts). NSP logits come
from the ``nsp`` head on the pooled [CLS] (``model.run_head``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..config import Family
from ..errors import ConfigError
from ..specials import SpecialIds
from .base import Objective, as_tokenizer_ids, make_config, pad_stack, ratio
from .losses import sparse_ce
from .datasets import SentencePairs
from .example_rng import row_generators
from .mlm import Masker, MLMConfig, wrap_ids


@dataclass
class NSPConfig(MLMConfig):
    """MLM settings plus the sentence-pair ones (defaults: BERT)."""

    random_next_prob: float = 0.5
    """Probability that B comes from another document (label 1)."""
    short_seq_prob: float = 0.1
    """Probability that a chunk targets a random shorter length (BERT: 0.1)."""
    nsp_weight: float = 1.0
    """Weight of the mean NSP loss next to the mean MLM loss."""
    pair_seed: int = 0
    """Seed of the dataset's deterministic choices (chunk lengths, random-document partners)."""

    def validate(self) -> "NSPConfig":
        super().validate()
        for f in ("random_next_prob", "short_seq_prob"):
            if not 0.0 <= getattr(self, f) <= 1.0:
                raise ConfigError(f"{f} must be in [0, 1], got {getattr(self, f)}")
        if self.nsp_weight < 0:
            raise ConfigError(f"nsp_weight must be >= 0, got {self.nsp_weight}")
        return self


def truncate_pair(a: np.ndarray, b: np.ndarray, max_tokens: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """BERT's ``truncate_seq_pair`` in closed form.

    BERT removes one token at a time from the longer sequence (B on ties), from its front or back
    with probability 1/2. So: the longer side first loses the length difference, then the two
    alternate (B first); the number removed from the front of each is Binomial(removed, 1/2).
    """
    la, lb = len(a), len(b)
    excess = la + lb - max_tokens
    if excess <= 0:
        return a, b
    d = la - lb
    first = min(excess, abs(d))
    rest = excess - first
    ta = (first if d > 0 else 0) + rest // 2
    tb = (first if d <= 0 else 0) + (rest - rest // 2)
    fa, fb = int(rng.binomial(ta, 0.5)), int(rng.binomial(tb, 0.5))
    return a[fa : la - (ta - fa)], b[fb : lb - (tb - fb)]


class MLMNSP(Objective):
    """MLM + NSP; the model needs an encoder with ``lm`` and ``nsp`` heads, segment embeddings
    (``type_vocab_size >= 2``) and a pooler."""

    name = "nsp"
    family = Family.ENCODER
    heads = {"lm": {}, "nsp": {}}
    metric_names = ("mlm_loss", "mlm_acc", "nsp_loss", "nsp_acc")
    lm_loss_metric = "mlm_loss"
    sparse_targets = True
    #: pairs and masks drawn per example (objectives.example_rng): the same whatever the batch split
    per_example_rng = True

    def __init__(self, tokenizer: Any, config: NSPConfig | None = None, **settings: Any):
        """Args:
            tokenizer: a Tokenizer or :class:`~transferlab.objectives.base.TokenizerIds`.
            config: an :class:`NSPConfig`; keyword ``settings`` override its fields.
        """
        self.sp = as_tokenizer_ids(tokenizer)
        self.config = make_config(NSPConfig, config, settings, self.name)
        self.masker = Masker(self.sp, self.config, self.name)
        self.first, self.last = wrap_ids(self.sp)
        if self.first is None or self.last is None:
            raise ConfigError("nsp needs [CLS]/[SEP] (or bos/eos) tokens to build sentence pairs")
        self.pad_id = SpecialIds.resolve(tokenizer=self.sp).pad

    def check_model(self, cfg: Any) -> None:
        """ConfigError unless the model is an encoder with lm+nsp heads, segments and a pooler."""
        cfg = self._check_common(cfg, Family.ENCODER, self.sp)
        if cfg.type_vocab_size < 2:
            raise ConfigError(
                f"nsp needs segment embeddings for A and B: model.type_vocab_size >= 2, got {cfg.type_vocab_size}"
            )
        if not cfg.pooler:
            raise ConfigError("nsp classifies the pooled [CLS] vector: set model.pooler=true")

    def model_settings(self) -> dict[str, Any]:
        """As the base, plus segment embeddings for A/B and the [CLS] pooler."""
        return {**super().model_settings(), "type_vocab_size": 2, "pooler": True}

    def dataset(self, shards: Any, seq_len: int) -> SentencePairs:
        """Sentence-pair material with room for ``[CLS] A [SEP] B [SEP]`` in ``seq_len``."""
        if seq_len < 5:
            raise ConfigError(f"nsp needs seq_len >= 5 ([CLS] A [SEP] B [SEP]), got {seq_len}")
        return SentencePairs(shards, seq_len - 3, self.config.short_seq_prob, self.config.pair_seed)

    def make_pair(self, ex: dict[str, Any], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
        """(A, B, label) for one example; label 1 when B is from another document."""
        sents = [s for s in ex["sentences"] if len(s)]
        rand_sents = [s for s in ex.get("random_sentences", []) if len(s)]
        max_tokens = int(ex["max_tokens"])  # what the pair is truncated to (seq_len - 3)
        target = int(ex.get("target", max_tokens))  # BERT's target_seq_length (short 10% of the time)
        is_random = bool(rng.random() < self.config.random_next_prob) and bool(rand_sents)
        if len(sents) >= 2:
            k = int(rng.integers(1, len(sents)))  # A = sentences[:k], k in [1, n-1]
            a, rest = np.concatenate(sents[:k]), sents[k:]
        else:
            s = sents[0]
            if not is_random and len(s) < 2:
                is_random = bool(rand_sents)
            if is_random or len(s) < 2:
                a, rest = s, []
            else:  # one sentence: split it inside for an is-next pair
                cut = int(rng.integers(1, len(s)))
                a, rest = s[:cut], [s[cut:]]
        if is_random:
            want = max(1, target - len(a))
            lens = np.cumsum([len(s) for s in rand_sents])
            n_take = int(np.searchsorted(lens, want)) + 1  # sentences until the target is filled
            b = np.concatenate(rand_sents[:n_take])
        else:
            b = np.concatenate(rest) if rest else np.zeros(0, dtype=np.int64)
        a, b = truncate_pair(a, b, max_tokens, rng)
        return a, b, int(is_random)

    def collate(self, examples: list[dict[str, Any]], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """Pair material -> ``input_ids``, ``token_type_ids``, ``attention_mask``, ``labels``
        (B, T), ``next_sentence_label`` (B,) and ``n_targets``."""
        rows, types, nsp = [], [], []
        for ex, g in zip(examples, row_generators(rng, len(examples))):  # each pair from its own stream
            a, b, lab = self.make_pair(ex, g)
            rows.append(np.concatenate([[self.first], a, [self.last], b, [self.last]]).astype(np.int64))
            types.append(np.concatenate([np.zeros(len(a) + 2, np.int64), np.ones(len(b) + 1, np.int64)]))
            nsp.append(lab)
        ids, am = pad_stack(rows, self.pad_id)
        tt, _ = pad_stack(types, 0)
        inputs, labels = self.masker(ids, am, rng)
        return {
            "input_ids": torch.from_numpy(inputs),
            "token_type_ids": torch.from_numpy(tt),
            "attention_mask": torch.from_numpy(am),
            "labels": torch.from_numpy(labels),
            "next_sentence_label": torch.tensor(nsp, dtype=torch.long),
            "n_targets": torch.tensor(int((labels != -100).sum())),
        }

    @staticmethod
    def global_counts(batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """Masked tokens and pairs of a micro-batch; the trainer sums them over the whole step."""
        return {"n_mlm": float((batch["labels"] != -100).sum()), "n_pairs": float(batch["next_sentence_label"].numel())}

    def compute(self, module: torch.nn.Module, batch: dict[str, torch.Tensor]):
        model = self._model_of(module)
        am = batch.get("attention_mask")
        out = model.backbone(input_ids=batch["input_ids"], attention_mask=am, token_type_ids=batch.get("token_type_ids"))
        mlm_sum, correct, n = sparse_ce(model.heads["lm"], out.last_hidden_state, batch["labels"])
        nsp_logits = model.run_head("nsp", out, am)  # (B, 2) from the pooled [CLS]
        nsp_labels = batch["next_sentence_label"]
        nsp_sum = F.cross_entropy(nsp_logits.float(), nsp_labels, reduction="sum")
        n_pairs = torch.tensor(nsp_labels.numel(), device=nsp_sum.device)
        # scale the NSP part so that loss_sum / N_mlm = mlm_mean + w * nsp_mean over the whole step
        g = batch.get("global_counts")
        share = g["n_mlm"] / max(g["n_pairs"], 1.0) if g is not None else n.to(nsp_sum.dtype) / n_pairs
        loss_sum = mlm_sum + self.config.nsp_weight * nsp_sum * share
        nsp_correct = (nsp_logits.detach().argmax(-1) == nsp_labels).sum()
        return loss_sum, {
            "mlm_loss": ratio(mlm_sum, n), "mlm_acc": ratio(correct, n),
            "nsp_loss": ratio(nsp_sum, n_pairs), "nsp_acc": ratio(nsp_correct, n_pairs),
        }
