"""The Backbone contract: consumers ask the backbone, and a family registered in this file (a
1-layer GRU language model) runs pre-training, fine-tuning, features and generation."""

from __future__ import annotations

import dataclasses
import json
import random
import re

import numpy as np
import pytest
import torch
import torch.nn as nn

from tiny import tiny_model
from transferlab.config import ModelConfig
from transferlab.errors import ConfigError
from transferlab.models.backbone import Backbone, register_family
from transferlab.models.families import BackboneOutput
from transferlab.models.model import TransferModel
from transferlab.training.optim import param_groups


def _old_depth_fn(model: nn.Module):
    """``training/optim.py``'s name-based ``_depth_fn`` at 331fe7c, kept as the reference."""
    n = 0
    for name, _ in model.named_parameters():
        m = re.search(r"\.blocks\.(\d+)\.", name)
        if m:
            n = max(n, int(m.group(1)) + 1)

    def depth(name: str) -> tuple[int, int]:
        m = re.search(r"\.blocks\.(\d+)\.", name)
        if m:
            return int(m.group(1)) + 1, n
        if name.startswith("heads.") or ".pooler." in name or ".final_norm." in name:
            return n + 1, n
        return 0, n

    return depth


TINY = dict(seed=None, vocab_size=64, max_positions=64, decoder_start=0)  # tiny.tiny_model: d_model 32, 2 heads


@pytest.mark.parametrize("preset,kw", [
    ("bert-mini", {}), ("bert-mini", {"heads": {"lm": {}, "classification": {"num_labels": 3}}}),
    ("gpt-mini", {}), ("bart-mini", {"n_decoder_layers": 3}), ("t5-mini", {"d_head": 16}),
])
def test_param_groups_equal_the_name_based_depths(preset, kw):
    torch.manual_seed(0)
    model = tiny_model(preset, **TINY, **kw)
    decay = 0.8
    old = _old_depth_fn(model)
    groups = param_groups(model, 0.01, 1e-3, layer_lr_decay=decay)
    got = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    names = dict(model.named_parameters())
    assert set(got) == {id(p) for p in names.values()}
    for name, p in names.items():
        d, L = old(name)
        assert got[id(p)] == decay ** (L + 1 - d), name


def test_depth_fn_by_name_equals_the_name_based_depths():
    from transferlab.training.optim import depth_fn

    model = tiny_model("bart-mini", **TINY, n_decoder_layers=3)
    old, new = _old_depth_fn(model), depth_fn(model)
    for name, _ in model.named_parameters():
        assert new(name) == old(name), name
    assert new("heads.x") == old("heads.x")


def test_compile_model_compiles_each_backbones_units(monkeypatch):
    # per-unit compilation (FSDP, bare models) compiles what compile_units names: every Block
    from transferlab.models.blocks import Block
    from transferlab.training.loop import compile_model

    model = tiny_model("bart-mini", **TINY)
    seen: list[nn.Module] = []
    monkeypatch.setattr(nn.Module, "compile", lambda self, *a, **k: seen.append(self))
    compile_model(model, whole=False)
    blocks = [m for m in model.modules() if isinstance(m, Block)]
    assert len(blocks) == 4 and len(seen) == 4 and all(a is b for a, b in zip(seen, blocks))


def test_gradient_checkpointing_is_switched_through_the_backbone():
    from transferlab.models.blocks import set_gradient_checkpointing

    model = tiny_model("t5-mini", **TINY, d_head=16)
    assert set_gradient_checkpointing(model, True) == 1
    assert all(s.gradient_checkpointing for s in model.backbone.stacks())
    set_gradient_checkpointing(model, False)
    assert not any(s.gradient_checkpointing for s in model.backbone.stacks())


# ---------------------------------------------------------------------------------- a toy family

@dataclasses.dataclass
class GRUOptions:
    """The GRU family's own settings (``model.family_options``)."""

    gru_layers: int = 1
    """Stacked GRU layers."""

    def validate(self) -> None:
        if self.gru_layers < 1:
            raise ConfigError(f"model.family_options.gru_layers must be >= 1, got {self.gru_layers}")


class GRUState:
    """The decode state of a GRU: its hidden state (L, B, C) and the positions consumed."""

    def __init__(self, h: torch.Tensor):
        self.h = h
        self.seq_len = 0

    def reorder(self, index: torch.Tensor) -> None:
        self.h = self.h.index_select(1, index.to(self.h.device))


class GRULM(Backbone):
    """A GRU language model: token table -> GRU -> hidden states; heads read d_model."""

    can_generate = True

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        opts = cfg.family_options
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.gru = nn.GRU(cfg.d_model, cfg.d_model, num_layers=opts.gru_layers, batch_first=True)
        self.drop = nn.Dropout(cfg.dropout)

    def _run(self, ids: torch.Tensor, h0: torch.Tensor | None):
        x = self.drop(self.embed_tokens(ids))  # (B, T, C)
        y, h = self.gru(x, h0)  # (B, T, C), (L, B, C)
        return x, self.drop(y), h

    def forward(self, input_ids=None, attention_mask=None, output_hidden_states=False, **_unused):
        # right padding only: a causal GRU's states at real positions do not see the padding
        x, y, _ = self._run(input_ids, None)
        return BackboneOutput(y, (x, y) if output_hidden_states else None)

    @property
    def num_hidden_states(self) -> int:
        return 2  # embeddings + the GRU's output

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def layer_groups(self) -> list[list[nn.Parameter]]:
        return [list(self.embed_tokens.parameters()), list(self.gru.parameters()), []]

    @classmethod
    def estimate_flops(cls, cfg, seq_len, mode="train", decoder_len=None, n_predicted=None) -> float:
        d, L = cfg.d_model, cfg.family_options.gru_layers
        rows = 1 if mode == "decode" else seq_len
        pred = rows if n_predicted is None else n_predicted
        macs = rows * L * 6 * d * d + pred * d * cfg.vocab_size  # 3 gates x (input + hidden) matmuls
        return (6.0 if mode == "train" else 2.0) * macs

    def new_cache(self, batch, capacity, dtype, device, zeros=False) -> GRUState:
        L = self.config.family_options.gru_layers
        return GRUState(torch.zeros(L, batch, self.config.d_model, dtype=dtype, device=device))

    def decode(self, ids, mask, positions, cache, memory=None, memory_mask=None) -> torch.Tensor:
        _, y, h = self._run(ids, cache.h if cache is not None and cache.seq_len else None)
        if cache is not None:
            cache.h, cache.seq_len = h, cache.seq_len + ids.shape[1]
        return y  # (B, T, C)


@pytest.fixture(scope="module", autouse=True)
def gru_family():
    """The family registered for this module's tests only (other tests see the built-ins)."""
    from transferlab.config import FAMILY_SPECS
    from transferlab.models.backbone import FAMILIES

    register_family("gru-lm", GRULM, GRUOptions, replace=True)
    yield
    FAMILIES.pop("gru-lm", None)
    FAMILY_SPECS.pop("gru-lm", None)

V_WORDS = "the a cat dog sat ran on under mat rug and then big small red blue".split()


def _gru_config(vocab: int, **kw) -> ModelConfig:
    return ModelConfig(family="gru-lm", vocab_size=vocab, d_model=32, n_layers=1, dropout=0.0,
                       heads={"lm": {}}, **kw).validate()


def _texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(V_WORDS) for _ in range(rng.randint(5, 12))) for _ in range(n)]


@pytest.fixture(scope="module")
def tok():
    from transferlab.tokenizer import Tokenizer

    return Tokenizer.train(_texts(300), kind="bpe", vocab_size=120, n_sentinels=0)


@pytest.fixture(scope="module")
def gru_dir(tmp_path_factory, tok):
    """A saved GRU LM (config.json with its family options) and its tokenizer."""
    d = tmp_path_factory.mktemp("gru")
    torch.manual_seed(0)
    cfg = _gru_config(len(tok), eos_token_id=tok.eos_token_id if tok.eos_token_id is not None else -1,
                      pad_token_id=tok.pad_token_id or 0, family_options={"gru_layers": 1})
    TransferModel(cfg).save_pretrained(d)
    tok.save(d)
    return d


def test_family_names_and_options_are_validated_saved_and_read_back(gru_dir):
    from transferlab.models.model import from_pretrained

    with pytest.raises(ConfigError, match=r"model.family: 'lstm' is not one of: encoder, decoder, .*gru-lm"):
        ModelConfig(family="lstm").validate()
    with pytest.raises(ConfigError, match="gru_layers must be >= 1"):
        _gru_config(64, family_options={"gru_layers": 0})
    with pytest.raises(ConfigError, match=r"model.family_options.gru_layers: expected an integer"):
        _gru_config(64, family_options={"gru_layers": "two"})
    with pytest.raises(ConfigError, match=r"model.family_options: unknown field\(s\) hidden"):
        _gru_config(64, family_options={"hidden": 3})
    with pytest.raises(ConfigError, match="family 'encoder' has no settings of its own"):
        ModelConfig(family="encoder", family_options={"gru_layers": 2}).validate()
    assert _gru_config(64).family_options == GRUOptions()  # defaults when none are given
    assert _gru_config(64).is_causal and not _gru_config(64).is_encoder_decoder  # from the backbone's flags
    saved = json.loads((gru_dir / "config.json").read_text())
    assert saved["family"] == "gru-lm" and saved["family_options"] == {"gru_layers": 1}
    model = from_pretrained(gru_dir)
    assert model.family == "gru-lm" and isinstance(model.config.family_options, GRUOptions)
    assert isinstance(model.backbone, GRULM) and model.num_parameters() > 0
    # the transformer-only rules (d_model divisible by n_heads, ...) do not apply to it
    assert _gru_config(64, n_heads=5).n_heads == 5


def test_gru_consumers_ask_the_backbone(gru_dir):
    from transferlab.cost import estimate_flops
    from transferlab.models.blocks import set_gradient_checkpointing
    from transferlab.models.model import from_pretrained
    from transferlab.training.optim import param_groups

    model = from_pretrained(gru_dir)
    cfg = model.config
    assert estimate_flops(cfg, 10) == GRULM.estimate_flops(cfg, 10) == model.estimate_flops(10)
    groups = param_groups(model, 0.01, 1e-3, layer_lr_decay=0.5)
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    assert scale[id(model.backbone.embed_tokens.weight)] == 0.25
    assert all(scale[id(p)] == 0.5 for p in model.backbone.gru.parameters())
    assert all(scale[id(p)] == 1.0 for n, p in model.named_parameters() if n.startswith("heads."))
    with pytest.raises(ConfigError, match="does not support gradient checkpointing"):
        set_gradient_checkpointing(model, True)
    out = model(input_ids=torch.tensor([[3, 4, 5]]), output_hidden_states=True)
    assert out.logits.shape == (1, 3, cfg.vocab_size) and len(out.hidden_states) == model.backbone.num_hidden_states


def test_gru_pretrains_clm(tmp_path, tok):
    from transferlab.data.prepare import prepare_corpus
    from transferlab.training.config import TrainConfig
    from transferlab.training.pretrain import pretrain

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(_texts(400, seed=1)) + "\n", encoding="utf-8")
    tok_dir = tmp_path / "tok"
    tok.save(tok_dir)
    prepare_corpus(corpus, tok_dir, tmp_path / "data", workers=0, progress=False, val_fraction=0.05)
    cfg = _gru_config(len(tok), eos_token_id=tok.eos_token_id if tok.eos_token_id is not None else -1,
                      pad_token_id=tok.pad_token_id or 0)
    train = TrainConfig(batch_size=8, seq_len=16, max_steps=40, lr=1e-2, warmup=0.1, eval_every=0, save_every=0,
                        log_every=1, dtype="fp32", seed=0, progress=False, tensorboard=False, num_threads=1)
    summary = pretrain(cfg, "clm", None, train, tmp_path / "data", tmp_path / "run",
                       cost=None)
    losses = [json.loads(x)["loss"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
              if '"train"' in x]
    assert len(losses) == 40 and np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.5
    assert summary["steps"] == 40


def test_gru_finetunes_classification(tmp_path, gru_dir):
    from transferlab.finetune import FinetuneConfig, finetune, predict

    rng = random.Random(2)

    def rows(n: int) -> str:
        out = ["text,label"]
        for _ in range(n):
            lab = rng.choice(["cat", "dog"])
            words = [rng.choice(V_WORDS) for _ in range(6)] + [lab, lab]
            out.append(f"{' '.join(words)},{lab}")
        return "\n".join(out) + "\n"

    (tmp_path / "train.csv").write_text(rows(96), encoding="utf-8")
    (tmp_path / "val.csv").write_text(rows(32), encoding="utf-8")
    res = finetune(FinetuneConfig(out_dir=str(tmp_path / "cls"), model=str(gru_dir),
                                  train_file=str(tmp_path / "train.csv"), validation_file=str(tmp_path / "val.csv"),
                                  epochs=4, lr=5e-3, batch_size=16, quiet=True, cost={"track_energy": False}))
    assert res.task_type == "classification"
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    preds = predict(res.out_dir, ["the cat sat on the mat cat cat", "a dog ran dog dog"])
    assert len(preds) == 2 and all(p["prediction"] in ("cat", "dog") for p in preds)


def test_gru_features(gru_dir, tok):
    from transferlab.features import extract_features
    from transferlab.models.model import from_pretrained

    model = from_pretrained(gru_dir)
    texts = _texts(5, seed=3)
    f = extract_features(model, tok, texts, layer=-1, pooling="mean")
    assert f.values.shape == (5, 32)
    f_all = extract_features(model, tok, texts, layer="all", pooling="mean")
    assert f_all.values.shape == (5, model.backbone.num_hidden_states, 32)


def test_gru_generate_is_the_greedy_loop(gru_dir):
    from transferlab.models.model import from_pretrained

    model = from_pretrained(gru_dir)
    prompt = torch.tensor([[7, 12, 9, 30]])
    got = model.generate(prompt, max_new_tokens=6, do_sample=False)
    # the same decoding written by hand: run the GRU over the prompt, then feed back the argmax
    bb, head = model.backbone, model.heads["lm"]
    with torch.no_grad():
        y, h = bb.gru(bb.embed_tokens(prompt))
        ids = prompt
        for _ in range(6):
            nxt = head(y[:, -1:]).argmax(-1)  # (1, 1)
            ids = torch.cat([ids, nxt], 1)
            if int(nxt) == model.config.eos_token_id:
                break
            y, h = bb.gru(bb.embed_tokens(nxt), h)
    assert got.tolist() == ids.tolist()


def test_gru_decode_state_continues_the_full_forward(gru_dir):
    # the contract generation codes against: new_cache + decode, one token at a time, equals one
    # forward over the whole sequence; reorder keeps the chosen rows (beam search)
    from transferlab.models.model import from_pretrained

    bb = from_pretrained(gru_dir).backbone
    ids = torch.tensor([[7, 12, 9, 30, 4], [3, 3, 8, 21, 5]])
    with torch.no_grad():
        full = bb(input_ids=ids).last_hidden_state  # (2, 5, C)
        cache = bb.new_cache(2, 16, torch.float32, torch.device("cpu"))
        steps = [bb.decode(ids[:, :2], None, None, cache)] + [bb.decode(ids[:, t:t + 1], None, None, cache)
                                                                for t in range(2, 5)]
        torch.testing.assert_close(torch.cat(steps, 1), full)
        assert cache.seq_len == 5
        cache.reorder(torch.tensor([1, 1]))
        nxt = bb.decode(torch.tensor([[6], [6]]), None, None, cache)
        alone = bb(input_ids=torch.cat([ids[1:], torch.tensor([[6]])], 1)).last_hidden_state[:, -1]
    torch.testing.assert_close(nxt[:, 0], alone.expand(2, -1))
