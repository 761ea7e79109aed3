"""ELECTRA: replaced-token detection with a small MLM generator (Clark et al., 2020).

* The **discriminator** is the model being pre-trained (an encoder with an ``rtd`` head); it is
  what ``unwrap_model`` returns and what fine-tuning loads.
* The **generator** is a second :class:`~transferlab.models.TransferModel` with an ``lm`` head,
  ``generator_size`` times as wide (ELECTRA-Small: 1/4; d_model, heads and d_ff are scaled, depth
  kept). It shares the discriminator's token, position and segment embeddings and the embedding
  norm, as ELECTRA does: their output (width ``d_model``, or ``embedding_size`` when set, as in
  ELECTRA-Small: 128 for a 256-wide discriminator) is projected to the generator's width (HF's
  ``embeddings_project``), and its MLM head maps back to that width (dense + act + norm) before
  the vocabulary projection tied to the shared token embedding.
* Both live in an :class:`ElectraPair` built by ``objective.wrap_model(model)``: the trainer
  optimises and checkpoints the pair (one optimiser for both, as in ELECTRA) and saves
  ``objective.unwrap_model(pair)`` — the discriminator.

One step (all inside ``ElectraPair.forward``, so DDP sees it): the collator masks 15% of the
tokens (ELECTRA's recipe: 85% [MASK], 15% kept, no random tokens); the generator is trained by
sparse MLM on them; at the masked positions tokens are *sampled* from the generator's softmax
(no gradient flows through sampling); the discriminator labels every non-pad token
original/replaced (a sampled token equal to the original counts as original) with a binary
cross-entropy via the ``rtd`` head.

Randomness is drawn per example (:mod:`.example_rng`): the masks as mlm's and one sampling
uniform per position (``sample_u``), keyed by the seed and the example's global position; nothing
per batch. Both normalisations use the whole step's counts (``global_counts``), so accumulation
and ranks give the large batch's loss exactly.

Loss: ``gen_mlm_sum + disc_weight * disc_mean * n_mlm`` with ``n_targets = n_mlm``, so
``loss_sum / n_targets = gen_mlm_mean + 50 * disc_mean`` (ELECTRA's loss, lambda = 50), where
``disc_mean`` averages over the micro-batch's non-pad tokens.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import Family, Position
from ..errors import ConfigError
from .base import ObjectiveModule, as_tokenizer_ids, make_config, ratio, strip_wrappers
from .losses import lm_cross_entropy
from .mlm import MLM, MLMConfig


@dataclass
class ElectraConfig(MLMConfig):
    """ELECTRA settings (defaults: ELECTRA-Small/Base)."""

    mask_prob: float = 0.15
    """Fraction of tokens the generator predicts (ELECTRA-Large: 0.25)."""
    mask_token_frac: float = 0.85
    """Of the picked tokens, the fraction shown to the generator as [MASK] (the rest are kept)."""
    random_token_frac: float = 0.0
    """ELECTRA uses no random tokens."""
    generator_size: float = 0.25
    """Generator width as a fraction of the discriminator's (d_model, heads and d_ff scaled)."""
    generator_layers: int = 0
    """Generator depth; 0 = the discriminator's."""
    disc_weight: float = 50.0
    """Weight lambda of the mean discriminator loss next to the mean generator MLM loss."""
    temperature: float = 1.0
    """Sampling temperature of the generator's softmax."""

    def validate(self) -> "ElectraConfig":
        super().validate()
        if not 0.0 < self.generator_size <= 1.0:
            raise ConfigError(f"generator_size must be in (0, 1], got {self.generator_size}")
        if self.generator_layers < 0:
            raise ConfigError(f"generator_layers must be >= 0, got {self.generator_layers}")
        if self.disc_weight < 0 or self.temperature <= 0:
            raise ConfigError(f"need disc_weight >= 0 and temperature > 0, got {self.disc_weight}, {self.temperature}")
        return self


def generator_config(disc_cfg: Any, size: float, layers: int = 0) -> Any:
    """The generator's ModelConfig: ``size`` times the discriminator's width, same vocabulary.

    Position and segment information come with the shared embeddings, so the generator's own
    learned/sinusoidal positions and segment table are switched off (rotary and relative
    positions live inside attention and are kept); its embedding norm is the shared one.
    """
    n_heads = max(1, round(disc_cfg.n_heads * size))
    d_model = max(n_heads, round(disc_cfg.d_model * size / n_heads) * n_heads)
    pos = Position(disc_cfg.position)
    cfg = copy.deepcopy(disc_cfg)
    cfg.d_model, cfg.n_heads, cfg.d_head = d_model, n_heads, 0
    cfg.embedding_size = None  # it reads the shared (E-wide) embeddings through ElectraPair.generator_proj
    cfg.d_ff = max(1, round(disc_cfg.d_ff * size))
    cfg.n_layers = layers or disc_cfg.n_layers
    cfg.position = Position.NONE if pos in (Position.LEARNED, Position.SINUSOIDAL) else pos
    cfg.type_vocab_size = 0
    cfg.embedding_norm = False
    cfg.scale_embeddings = False
    cfg.pooler = False
    cfg.tie_embeddings, cfg.lm_head_transform, cfg.lm_head_bias = True, True, True
    cfg.heads = {"lm": {}}
    return cfg.validate()


class ElectraPair(ObjectiveModule):
    """Discriminator + generator with shared embeddings; ``forward(**batch)`` is ELECTRA's loss.

    State dict keys: ``discriminator.*`` (the TransferModel that is saved for fine-tuning),
    ``generator.*`` and ``generator_proj.*``. Shared tensors are registered once (on the
    discriminator), so the state dict has no aliases and saves as safetensors.
    """

    def __init__(self, objective: Any, discriminator: nn.Module, generator: nn.Module | None = None):
        nn.Module.__init__(self)
        from ..models.blocks import Norm
        from ..models.model import TransferModel

        self._objective = [objective]
        self.discriminator = discriminator
        dcfg = discriminator.config
        cfg = objective.config
        if generator is None:
            generator = TransferModel(generator_config(dcfg, cfg.generator_size, cfg.generator_layers))
        self.generator = generator
        gcfg = generator.config
        shared = discriminator.backbone.get_input_embeddings()  # (V, E); E = C_d unless embedding_size is set
        E = dcfg.emb_dim
        # The generator reads the shared embedding output: it drops its own token table (unused
        # parameters would break DDP and waste V * C_g weights); the discriminator owns the table.
        generator.backbone.share_input_embeddings(shared)
        # The shared embedding output is E wide (ELECTRA-Small: E = 128, C_d = 256, C_g = 64); the
        # generator's own embeddings_project is this generator_proj (E -> C_g).
        self.generator_proj = (nn.Linear(E, gcfg.d_model) if gcfg.d_model != E else nn.Identity())
        # MLM head: dense(C_g -> E) + act + norm(E), then the tied (V, E) output matrix.
        head = generator.heads["lm"]
        head.transform.dense = nn.Linear(gcfg.d_model, E)
        head.transform.norm = Norm(E, dcfg.norm, dcfg.norm_eps)
        head.embed = [shared]
        for m in (self.generator_proj, head.transform.dense):
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, dcfg.init_std)
                nn.init.zeros_(m.bias)
        ref = shared.weight  # the new modules follow the discriminator's device and dtype
        for m in (self.generator, self.generator_proj):
            m.to(device=ref.device, dtype=ref.dtype)

    @property
    def generator_flops_config(self) -> Any:
        """The generator's config as :func:`~transferlab.cost.estimate_flops` should bill it: it
        reads the shared embeddings through ``generator_proj`` (E -> C_g) and its MLM head maps
        back to E (``C_g * E + E * V`` per prediction), which is the embedding projection of a
        config with ``embedding_size=E`` (E = the discriminator's embedding width)."""
        return dataclasses.replace(self.generator.config, embedding_size=self.discriminator.config.emb_dim).validate()

    @property
    def model(self) -> nn.Module:  # what unwrap_model returns
        return self.discriminator

    def shared_embeddings(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None,
                          attention_mask: torch.Tensor | None) -> torch.Tensor:
        """The discriminator's embedding output before dropout (B, T, E; E = C_d unless
        embedding_size is set, and before its emb_proj): token + position +
        segment, times the embedding scale, through the embedding norm, exactly as its Stack
        computes them (checked by a test): the backbone contract's ``input_embeddings``."""
        return self.discriminator.backbone.input_embeddings(input_ids, token_type_ids, attention_mask)

    def forward(self, **batch: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.objective.compute(self, batch)


class Electra(MLM):
    """Replaced-token detection; the model (discriminator) needs an encoder with an ``rtd`` head.

    Use ``pair = objective.wrap_model(model)`` and train ``pair``; ``objective.unwrap_model(pair)``
    is the discriminator.
    """

    name = "electra"
    family = Family.ENCODER
    heads = {"rtd": {}}
    metric_names = ("gen_loss", "gen_acc", "rtd_loss", "rtd_acc", "rtd_recall", "replaced_frac")
    lm_loss_metric = "gen_loss"  # the generator's MLM

    def __init__(self, tokenizer: Any, config: ElectraConfig | None = None, **settings: Any):
        """Args:
            tokenizer: a Tokenizer or :class:`~transferlab.objectives.base.TokenizerIds`.
            config: an :class:`ElectraConfig`; keyword ``settings`` override its fields.
        """
        sp = as_tokenizer_ids(tokenizer)
        super().__init__(sp, make_config(ElectraConfig, config, settings, self.name))

    def wrap_model(self, model: nn.Module) -> ElectraPair:
        """The discriminator paired with a fresh generator (seeded by torch's global RNG)."""
        core = strip_wrappers(model)
        if isinstance(core, ElectraPair):
            return model
        self.check_model(core.config)
        return ElectraPair(self, core)

    def step_flops(self, cfg: Any, seq_len: int, step_tokens: float, n_targets: float) -> float:
        """Training FLOPs of one step: the discriminator on every token plus the generator's
        sparse MLM on the ``n_targets`` masked tokens, the generator billed as
        :attr:`ElectraPair.generator_flops_config` (it reads the shared E-wide embeddings)."""
        from ..cost import estimate_flops

        c = self.config
        gen_cfg = dataclasses.replace(generator_config(cfg, c.generator_size, c.generator_layers),
                                      embedding_size=cfg.emb_dim).validate()
        n_seq = step_tokens / seq_len
        per_seq = n_targets / max(n_seq, 1e-9)
        return n_seq * (estimate_flops(cfg, seq_len, "train", None, 0.0)
                        + estimate_flops(gen_cfg, seq_len, "train", None, per_seq))

    @staticmethod
    def global_counts(batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """Masked and real tokens of a micro-batch; the trainer sums them over the whole step."""
        am = batch.get("attention_mask")
        n_tok = float(am.sum()) if am is not None else float(batch["input_ids"].numel())
        return {"n_mlm": float((batch["labels"] != -100).sum()), "n_tok": n_tok}

    def collate(self, examples: list[Any], rng: Any) -> dict[str, torch.Tensor]:
        """MLM's batch plus ``sample_u`` (B, T): one uniform per position for sampling the
        generator's replacement tokens, drawn with the masks (per example)."""
        batch = super().collate(examples, rng)
        batch["sample_u"] = torch.from_numpy(rng.random(tuple(batch["input_ids"].shape)))
        return batch

    def compute(self, module: nn.Module, batch: dict[str, torch.Tensor]):
        if not isinstance(module, ElectraPair):
            raise TypeError("electra: train objective.wrap_model(model) (an ElectraPair that owns the generator), not the bare model")
        pair, cfg = module, self.config
        disc, gen = pair.discriminator, pair.generator
        ids, labels = batch["input_ids"], batch["labels"]  # (B, T): masked inputs, originals at picked
        am = batch.get("attention_mask")
        tt = batch.get("token_type_ids")
        am_b = am.bool() if am is not None else torch.ones_like(ids, dtype=torch.bool)
        sel = labels != -100  # (B, T) picked positions
        n_mlm = sel.sum()

        # generator: sparse MLM on the shared embeddings projected to its width
        e = pair.generator_proj(pair.shared_embeddings(ids, tt, am))  # (B, T, C_g)
        gh = gen.backbone(input_ids=ids, attention_mask=am, inputs_embeds=e).last_hidden_state
        g_logits = gen.heads["lm"](gh[sel])  # (N, V)
        tgt = labels[sel]
        gen_sum = lm_cross_entropy(g_logits, tgt, reduction="sum")  # logits kept: sampling needs them

        # sample replacements from the generator's softmax; no gradient through sampling
        with torch.no_grad():
            probs = torch.softmax(g_logits.float() / cfg.temperature, dim=-1)
            if "sample_u" in batch and probs.shape[0]:
                # inverse-CDF sampling with the collator's per-example uniforms, so a token's
                # replacement does not depend on the batch split (accumulation, ranks)
                u = batch["sample_u"][sel].to(probs.dtype)  # (N,)
                cdf = probs.cumsum(-1)  # (N, V)
                sampled = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1)).squeeze(-1)
                sampled = sampled.clamp(max=probs.shape[-1] - 1)
            else:
                sampled = torch.multinomial(probs, 1).squeeze(-1) if probs.shape[0] else tgt
            original = torch.where(sel, labels, ids)
            fake = ids.clone()
            fake[sel] = sampled
            replaced = (fake != original) & am_b  # (B, T) discriminator targets

        # discriminator: is each non-pad token original or replaced?
        dh = disc.backbone(input_ids=fake, attention_mask=am, token_type_ids=tt).last_hidden_state
        d_logits = disc.heads["rtd"](dh).float()  # (B, T)
        disc_sum = F.binary_cross_entropy_with_logits(d_logits[am_b], replaced[am_b].float(), reduction="sum")
        n_tok = am_b.sum()
        g = batch.get("global_counts")
        if g is not None:  # the whole accumulated/distributed batch's ratio (the trainer's global_counts)
            share = g["n_mlm"] / max(g["n_tok"], 1.0)
        else:
            share = n_mlm.to(disc_sum.dtype) / n_tok.clamp(min=1)
        # = n_mlm * (gen mean + disc_weight * disc mean) over the batch: a sum normalised by n_targets
        loss_sum = gen_sum + cfg.disc_weight * disc_sum * share

        with torch.no_grad():
            pred = d_logits > 0
            rep = replaced[am_b]
            p = pred[am_b]
            metrics = {
                "gen_loss": ratio(gen_sum, n_mlm),
                "gen_acc": ratio((g_logits.argmax(-1) == tgt).sum(), n_mlm),
                "rtd_loss": ratio(disc_sum, n_tok),
                "rtd_acc": ratio((p == rep).sum(), n_tok),
                "rtd_recall": ratio((p & rep).sum(), rep.sum()),
                "replaced_frac": ratio(rep.sum(), n_tok),
            }
        return loss_sum, metrics

