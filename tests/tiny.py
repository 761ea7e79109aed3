"""Tiny builders shared by the tests: plain functions and constants, imported as ``from tiny import ...``
(tests/ is on sys.path: pytest puts the folder of tests/conftest.py there). Fixtures built on them
live in tests/conftest.py. Every value here is one a test's numbers depend on (golden losses, bit-exact
resumes, statistics bounds): change one only together with the tests that use it.

Sections: tiny models of any family or preset; a toy objective and toy decoder for the training
loop; corpora and prepared shards; a synthetic vocabulary for the objectives; the golden-loss setting; a tiny fine-tuning world (one model per family + task files);
the kill -9 harness (a real ``python -m transferlab`` process, killed after a checkpoint).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from transferlab.config import PRESETS, ModelConfig, get_preset
from transferlab.models import build_model
from transferlab.models.model import TransferModel
from transferlab.objectives import TokenizerIds, build_objective
from transferlab.objectives.base import Objective
from transferlab.tokenizer import Tokenizer
from transferlab.training.config import TrainConfig
from transferlab.training.loop import Trainer

if TYPE_CHECKING:  # fine-tuning is imported where it is used: the other sections stay light
    from transferlab.finetune import FinetuneConfig

REPO = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------- tiny models
#: the sizes every tiny model shares unless a test sets its own
TINY_SIZES = dict(d_model=32, n_heads=2, d_ff=64)


def tiny_config(kind: str | None = None, decoder_start: int | None = None, **fields) -> ModelConfig:
    """A tiny model config: d_model 32, 2 heads, d_ff 64 (:data:`TINY_SIZES`) unless ``fields`` say otherwise.

    Args:
        kind: a preset name (``bert-tiny``, ``gpt-mini``, ...: its other fields are the preset's),
            a family name (``encoder``, ...: the other fields are ModelConfig's defaults), or None
            with ``family`` among ``fields``.
        decoder_start: ``decoder_start_token_id`` where the config is an encoder-decoder (ignored
            otherwise: the tests build every family through one call).
        fields: any ModelConfig field (``vocab_size``, ``n_layers``, ``dropout``, ``heads``, ...).

    Returns:
        The config (a preset's is validated, as ``get_preset`` does).
    """
    fields = {**TINY_SIZES, **fields}
    if kind in PRESETS:
        if decoder_start is not None and PRESETS[kind].is_encoder_decoder:
            fields = {"decoder_start_token_id": decoder_start, **fields}
        return get_preset(kind, **fields)
    if kind is not None:
        fields["family"] = kind
    cfg = ModelConfig(**fields)
    if decoder_start is not None and cfg.is_encoder_decoder:
        cfg.decoder_start_token_id = decoder_start
    return cfg


def tiny_model(kind: str | None = None, seed: int | None = 0, decoder_start: int | None = None,
               **fields) -> TransferModel:
    """A freshly initialised model of :func:`tiny_config` ``(kind, decoder_start, **fields)``.

    Args:
        kind: a preset or family name (see :func:`tiny_config`).
        seed: ``torch.manual_seed`` right before the weights are drawn (None: the stream as it is).
        decoder_start: an encoder-decoder's ``decoder_start_token_id``.
        fields: ModelConfig fields.

    Returns:
        The model (in train mode, as built).
    """
    cfg = tiny_config(kind, decoder_start, **fields)
    if seed is not None:
        torch.manual_seed(seed)
    return build_model(cfg)


# ----------------------------------------------------------------------------- training loop
TOY_V, TOY_L = 64, 16  # toy vocabulary and window length


class ToyLM(Objective):
    """Next-token prediction where every row keeps a different number of targets.

    Rows are cut at a length that depends on the row's first token (deterministic) or, with
    ``random_cut``, is drawn from the trainer's rng; so a loss normalised per micro-batch instead
    of over the whole accumulated batch gives measurably different gradients.
    """

    name = "toy"
    metric_names = ("acc",)

    def __init__(self, random_cut: bool = False, nan_at_call: int | None = None):
        self.random_cut, self.nan_at_call, self.calls = random_cut, nan_at_call, 0

    def check_model(self, cfg) -> None:
        pass

    def dataset(self, shards, seq_len):
        return shards

    def collate(self, examples, rng):
        x = torch.as_tensor(np.stack(examples))  # (B, T)
        T = x.shape[1]
        if self.random_cut:
            cut = rng.integers(2, T + 1, size=len(examples))
        else:
            cut = 2 + x[:, 0].numpy() % (T - 1)  # 2..T kept tokens
        keep = torch.as_tensor(np.arange(T)[None] < cut[:, None])
        labels = x.masked_fill(~keep, -100)
        return {"input_ids": x, "attention_mask": keep.long(), "labels": labels,
                "n_targets": (labels[:, 1:] != -100).sum()}

    def compute(self, module, batch):
        self.calls += 1
        model = self._model_of(module)
        out = model.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        logits = model.heads["lm"](out.last_hidden_state[:, :-1])  # (B, T-1, TOY_V)
        tgt = batch["labels"][:, 1:]
        loss_sum = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), tgt.reshape(-1),
                                   ignore_index=-100, reduction="sum")
        if self.nan_at_call is not None and self.calls >= self.nan_at_call:
            loss_sum = loss_sum * float("nan")
        n = (tgt != -100).sum().clamp(min=1)
        return loss_sum, {"acc": (logits.argmax(-1) == tgt).sum() / n}


def toy_data(n: int = 48, seed: int = 0, length: int = TOY_L) -> list[np.ndarray]:
    """``n`` random windows of ``length`` token ids in [1, TOY_V)."""
    r = np.random.default_rng(seed)
    return [r.integers(1, TOY_V, length) for _ in range(n)]


def toy_model(seed: int = 0, dropout: float = 0.0) -> torch.nn.Module:
    """A 2-layer pre-norm decoder (d_model 32) with an LM head over TOY_V, initialised from ``seed``."""
    torch.manual_seed(seed)
    cfg = ModelConfig(family="decoder", vocab_size=TOY_V, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_positions=32,
                      prenorm=True, final_norm=True, embedding_norm=False, dropout=dropout,
                      attention_dropout=dropout, heads={"lm": {}})
    return build_model(cfg)


def tcfg(**kw) -> TrainConfig:
    """A 6-step fp32 TrainConfig for toy runs (no eval, no saving, no bar); ``kw`` overrides any field."""
    base = dict(batch_size=4, seq_len=TOY_L, max_steps=6, lr=3e-3, warmup=0.2, eval_every=0, save_every=0, log_every=1,
                dtype="fp32", progress=False, tensorboard=False)
    base.update(kw)
    return TrainConfig(**base)


def write_corpus(path: Path, n_docs: int = 80, seed: int = 0) -> Path:
    """A small synthetic English-like corpus, documents separated by blank lines."""
    import random

    r = random.Random(seed)
    words = ("the a cat dog sat on mat ran fast slow house tree green blue red big small happy sad "
             "runs jumps over under quickly slowly bird fish river stone light dark").split()
    docs = []
    for _ in range(n_docs):
        sents = [" ".join(r.choice(words) for _ in range(r.randint(4, 12))).capitalize() + "."
                 for _ in range(r.randint(2, 6))]
        docs.append(" ".join(sents))
    return write_docs(path, docs)


def write_docs(path: Path, docs: list[str], end: str = "\n") -> Path:
    """A text corpus as ``prepare`` reads one: documents separated by blank lines.

    Args:
        path: the file to write.
        docs: the documents.
        end: what follows the last one.

    Returns:
        ``path``.
    """
    path.write_text("\n\n".join(docs) + end, encoding="utf-8")
    return path


def prepare_shards(corpus: Path, kind: str, out: Path, vocab_size: int = 300, val_fraction: float = 0.15,
                   min_frequency: int = 1) -> Tokenizer:
    """Train a tokenizer of ``kind`` on ``corpus`` in-process and prepare the corpus with it.

    Args:
        corpus: a text file (see :func:`write_docs`).
        kind: ``wordpiece``, ``bpe`` or ``unigram`` (with 20 T5 sentinels, for span corruption).
        out: the prepared folder to write (train and validation shards).
        vocab_size: the tokenizer's vocabulary size.
        val_fraction: the share of documents held out for validation.
        min_frequency: the tokenizer trainer's minimum pair / piece frequency.

    Returns:
        The tokenizer the shards were made with.
    """
    from transferlab.data import prepare_corpus

    extra = {"n_sentinels": 20} if kind == "unigram" else {}
    tok = Tokenizer.train([str(corpus)], kind=kind, vocab_size=vocab_size, min_frequency=min_frequency, **extra)
    prepare_corpus([str(corpus)], tok, out, val_fraction=val_fraction, workers=0, progress=False)
    return tok


def prepared_data(root: Path, kind: str = "wordpiece", n_docs: int = 80) -> Path:
    """Train a tiny tokenizer in-process and prepare shards with a validation split (``root/data-<kind>``)."""
    out = root / f"data-{kind}"
    prepare_shards(write_corpus(root / f"corpus-{kind}.txt", n_docs), kind, out)
    return out


# dotted overrides that shrink a preset to 1 layer, d_model 32 (CLI runs in seconds)
TINY_MODEL = ["model.n_layers=1", "model.d_model=32", "model.n_heads=2", "model.d_ff=64"]


# ----------------------------------------------------------------------------- objectives (synthetic ids)
OBJ_V = 1000  # objectives' synthetic vocabulary; ids >= 600 are continuation pieces
PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
N_SPECIAL = 5


def bert_ids(vocab: int = OBJ_V, **kw) -> TokenizerIds:
    """BERT-style special ids ([PAD] [UNK] [CLS] [SEP] [MASK] = 0..4) with "##" pieces from id 600."""
    cont = np.zeros(vocab, dtype=bool)
    cont[600:] = True  # ids >= 600 are "##" continuation pieces
    return TokenizerIds(vocab, pad_token_id=PAD, unk_token_id=UNK, cls_token_id=CLS, sep_token_id=SEP,
                      mask_token_id=MASK, continuation=cont, **kw)


def gpt_ids() -> TokenizerIds:
    return TokenizerIds(OBJ_V, eos_token_id=5, bos_token_id=5)


def encoder_cfg(**kw) -> ModelConfig:
    base = dict(vocab_size=OBJ_V, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_positions=256,
                dropout=0.0, attention_dropout=0.0, lm_head_transform=True, lm_head_bias=True, heads={"lm": {}})
    base.update(kw)
    return ModelConfig(**base)


def decoder_cfg(**kw) -> ModelConfig:
    base = dict(family="decoder", vocab_size=OBJ_V, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_positions=256,
                dropout=0.0, attention_dropout=0.0, prenorm=True, final_norm=True, embedding_norm=False,
                heads={"lm": {}})
    base.update(kw)
    return ModelConfig(**base)


def windows(n: int, T: int, seed: int = 0, low: int = N_SPECIAL) -> list[np.ndarray]:
    """``n`` random token windows of length ``T`` with ids in [low, OBJ_V)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(low, OBJ_V, T) for _ in range(n)]


def seq2seq_cfg(**kw) -> ModelConfig:
    base = dict(family="encoder-decoder", vocab_size=OBJ_V, d_model=32, n_layers=1, n_decoder_layers=1, n_heads=2,
                d_ff=64, max_positions=256, dropout=0.0, attention_dropout=0.0, heads={"lm": {}})
    base.update(kw)
    return ModelConfig(**base)


BMASK = 3  # bart_ids' <mask>


def bart_ids(**kw) -> TokenizerIds:
    cont = np.zeros(OBJ_V, dtype=bool)
    cont[600:] = True
    return TokenizerIds(OBJ_V, bos_token_id=0, pad_token_id=1, eos_token_id=2, mask_token_id=3, unk_token_id=4,
                      continuation=cont, **kw)


def t5_ids(n_sentinels: int = 100) -> TokenizerIds:
    return TokenizerIds(OBJ_V, pad_token_id=0, eos_token_id=1, unk_token_id=2,
                      sentinel_token_ids=tuple(range(OBJ_V - 1, OBJ_V - 1 - n_sentinels, -1)))


# ----------------------------------------------------------------------------- golden-loss setting
GOLDEN_V = 96


def golden_shards(seed: int = 0) -> SimpleNamespace:
    """120 documents of 2-6 sentences of 3-12 ordinary tokens (ids 24..GOLDEN_V-1)."""
    r = np.random.default_rng(seed)
    toks, docs, sents = [], [0], [0]
    n = 0
    for _ in range(120):
        for _ in range(r.integers(2, 7)):
            s = r.integers(24, GOLDEN_V, r.integers(3, 13))
            toks.append(s)
            n += len(s)
            sents.append(n)
        docs.append(n)
    return SimpleNamespace(tokens=np.concatenate(toks).astype(np.int64), doc_offsets=np.asarray(docs, np.int64),
                           sent_offsets=np.asarray(sents, np.int64))


def golden_specials(name: str) -> TokenizerIds:
    """The special ids of objective ``name``'s tokenizer style (BERT, GPT, BART or T5) over GOLDEN_V."""
    if name in ("mlm", "nsp", "electra", "plm", "mtlm"):  # BERT-style: [PAD] [UNK] [CLS] [SEP] [MASK]
        return TokenizerIds(GOLDEN_V, pad_token_id=0, unk_token_id=1, cls_token_id=2, sep_token_id=3, mask_token_id=4)
    if name == "clm":
        return TokenizerIds(GOLDEN_V, eos_token_id=5, bos_token_id=5)
    if name in ("denoise", "mass"):  # BART: <s> <pad> </s> <mask> <unk>
        return TokenizerIds(GOLDEN_V, bos_token_id=0, pad_token_id=1, eos_token_id=2, mask_token_id=3, unk_token_id=4)
    if name == "bilm":
        return TokenizerIds(GOLDEN_V, pad_token_id=0, eos_token_id=1)
    return TokenizerIds(GOLDEN_V, pad_token_id=0, eos_token_id=1, unk_token_id=2, sentinel_token_ids=tuple(range(23, 3, -1)))


def golden_model_config(name: str, sp: TokenizerIds) -> ModelConfig:
    """The tiny model objective ``name`` trains in the golden runs (family and heads by objective)."""
    common = dict(vocab_size=GOLDEN_V, d_model=32, n_heads=2, d_ff=64, max_positions=64, dropout=0.0,
                  attention_dropout=0.0, pad_token_id=sp.pad_token_id or 0)
    if name in ("mlm", "nsp", "electra", "plm", "mtlm"):
        heads = {"nsp": {"lm": {}, "nsp": {}}, "electra": {"rtd": {}}}.get(name, {"lm": {}})
        return ModelConfig(family="encoder", n_layers=2, type_vocab_size=2, pooler=True, lm_head_transform=True,
                           lm_head_bias=True, heads=heads, **common)
    if name == "clm":
        return ModelConfig(family="decoder", n_layers=2, prenorm=True, final_norm=True, embedding_norm=False,
                           norm_eps=1e-5, heads={"lm": {}}, **common)
    if name == "bilm":  # ELMo's biLM on token embeddings (the char CNN has its own tests)
        return ModelConfig(family="elmo", vocab_size=GOLDEN_V, d_model=16, n_layers=2, dropout=0.0, position="none",
                           tie_embeddings=True, lm_head_bias=True, pad_token_id=0, eos_token_id=1,
                           heads={"lm": {"type": "bilm_softmax"}},
                           family_options={"cell_size": 24, "token_input": "embedding"})
    if name in ("denoise", "mass"):  # mass starts decoding with [MASK] (MASS's [M])
        return ModelConfig(family="encoder-decoder", n_layers=1, position_offset=2, norm_eps=1e-5,
                           lm_head_bias=True, decoder_start_token_id=2 if name == "denoise" else 3,
                           heads={"lm": {}}, **common)
    return ModelConfig(family="encoder-decoder", n_layers=1, norm="rmsnorm", norm_eps=1e-6, prenorm=True,
                       embedding_norm=False, final_norm=True, activation="relu", position="relative", bias=False,
                       attn_scale=False, scale_logits=True, decoder_start_token_id=0, heads={"lm": {}},
                       **{**common, "d_ff": 64})


def golden_run_losses(name: str, out: Path, batch_size: int, grad_accum: int, info=None) -> list[float]:
    """Train objective ``name`` on the golden setting for 3 steps into ``out``.

    Args:
        name: objective name.
        out: run folder.
        batch_size: per-rank batch.
        grad_accum: micro-batches per step.
        info: the DistInfo of a torchrun rank, or None for one process.

    Returns:
        The train loss of each step (empty on ranks other than the main one).
    """
    sp = golden_specials(name)
    objective = build_objective(name, sp)
    torch.manual_seed(0)
    model = build_model(golden_model_config(name, sp))
    cfg = TrainConfig(batch_size=batch_size, grad_accum=grad_accum, seq_len=32, max_steps=3, lr=1e-2, warmup=0.0,
                      eval_every=0, save_every=0, log_every=1, dtype="fp32", seed=0, progress=False,
                      tensorboard=False, num_threads=1)
    # every rank holds the whole dataset; the trainer's GlobalSampler gives each its slice (as pretrain does)
    Trainer(model, objective, objective.dataset(golden_shards(), cfg.seq_len), cfg, out, info=info).fit()
    if info is not None and not info.is_main:
        return []
    return [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"train"' in x]


# ----------------------------------------------------------------------------- saved model folders
def family_layout(family: str) -> dict:
    """The layout fields a tiny model of ``family`` takes: BERT-style post-norm encoders with token
    types, GPT-style pre-norm decoders and encoder-decoders.

    Args:
        family: "encoder", "decoder" or "encoder-decoder".

    Returns:
        ``type_vocab_size``, ``prenorm``, ``final_norm`` and ``embedding_norm`` for ModelConfig.
    """
    enc = family == "encoder"
    return dict(type_vocab_size=2 if enc else 0, prenorm=not enc, final_norm=not enc, embedding_norm=enc)


def tokenizer_ids(tok: Tokenizer, bos: bool = False) -> dict:
    """The special ids a model takes from its tokenizer (pad 0, eos/bos -1 where it has none).

    Args:
        tok: the tokenizer the model is saved with.
        bos: also return ``bos_token_id``.

    Returns:
        ``pad_token_id``, ``eos_token_id`` (and ``bos_token_id``) for ModelConfig.
    """
    ids = dict(pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else 0,
               eos_token_id=tok.eos_token_id if tok.eos_token_id is not None else -1)
    if bos:
        ids["bos_token_id"] = tok.bos_token_id if tok.bos_token_id is not None else -1
    return ids


def save_model_dir(d: Path, cfg: ModelConfig, tok: Tokenizer) -> Path:
    """Save a model of ``cfg`` initialised from seed 0, with ``tok``, as a model folder.

    Args:
        d: the folder to write.
        cfg: the model's config.
        tok: its tokenizer.

    Returns:
        ``d``.
    """
    torch.manual_seed(0)
    TransferModel(cfg).save_pretrained(d)
    tok.save(d)
    return d


# ----------------------------------------------------------------------------- fine-tuning world
FT_WORDS = "good great fine bad awful poor the a movie film plot was is very quite and but".split()
FT_NAMES = "alice bob carol dave".split()
FT_COLORS = "red blue green black white pink".split()


def tagged_sentence(rng: random.Random, names: list[str], cities: list[str], fill: list[str]) -> dict:
    """One BIO-tagged sentence of 4-8 words: a name (B-PER, 25%), "<City> City" (B-LOC I-LOC, 15%)
    or a filler word (O).

    Args:
        rng: the stream to draw from (the draws are the tests' data: their order is fixed).
        names: lower-case person names.
        cities: lower-case city names.
        fill: filler words.

    Returns:
        ``{"tokens": [...], "tags": [...]}``, a row of a tagging task file.
    """
    toks, tags = [], []
    for _ in range(rng.randint(4, 8)):
        r = rng.random()
        if r < 0.25:
            toks.append(rng.choice(names).capitalize())
            tags.append("B-PER")
        elif r < 0.4:
            toks += [rng.choice(cities).capitalize(), "City"]
            tags += ["B-LOC", "I-LOC"]
        else:
            toks.append(rng.choice(fill))
            tags.append("O")
    return {"tokens": toks, "tags": tags}


def finetune_model_dir(root: Path, family: str) -> Path:
    """A randomly initialised 2-layer model of ``family`` with a tokenizer trained on FT_WORDS, saved
    under ``root / family``."""
    kind = "wordpiece" if family == "encoder" else "bpe"
    corpus = [" ".join(random.Random(i).choices(FT_WORDS + FT_NAMES + FT_COLORS, k=8)) for i in range(300)]
    corpus += [n.title() + " " + c.title() for n in FT_NAMES for c in FT_COLORS]
    tok = Tokenizer.train(corpus, kind=kind, vocab_size=200, n_sentinels=0)
    cfg = ModelConfig(
        family=family, vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_positions=64,
        pooler=family == "encoder", **family_layout(family), **tokenizer_ids(tok),
        decoder_start_token_id=tok.eos_token_id if family == "encoder-decoder" else -1,
        dropout=0.0, attention_dropout=0.0, heads={"lm": {}})
    return save_model_dir(root / family, cfg, tok)


def finetune_env(root: Path) -> dict[str, Path]:
    """One tiny model per family and small classification / tagging / seq2seq task files.

    Args:
        root: an empty folder to build in.

    Returns:
        ``{family: model dir, "cls_train" / "cls_val" / "tag" / "s2s": task file}``.
    """
    rng = random.Random(3)
    out = {f: finetune_model_dir(root, f) for f in ("encoder", "decoder", "encoder-decoder")}
    for split, n in (("train", 72), ("val", 20)):
        rows = ["text,label"]
        for _ in range(n):
            lab = rng.choice(["pos", "neg"])
            w = rng.choices(FT_WORDS[4:], k=rng.randint(3, 9))
            w.insert(rng.randrange(len(w)), rng.choice(FT_WORDS[:3] if lab == "pos" else FT_WORDS[3:6]))
            rows.append(f"{' '.join(w)},{lab}")
        (root / f"cls_{split}.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
        out[f"cls_{split}"] = root / f"cls_{split}.csv"
    tags = []
    for _ in range(64):
        toks, tg = [], []
        for _ in range(rng.randint(3, 8)):  # sentences of different lengths: token counts differ per batch
            if rng.random() < 0.3:
                toks.append(rng.choice(FT_NAMES).title())
                tg.append("B-PER")
            else:
                toks.append(rng.choice(FT_WORDS))
                tg.append("O")
        tags.append({"tokens": toks, "tags": tg})
    (root / "tag.jsonl").write_text("".join(json.dumps(t) + "\n" for t in tags), encoding="utf-8")
    out["tag"] = root / "tag.jsonl"
    s2s = []
    for _ in range(64):
        w = rng.sample(FT_COLORS, rng.randint(1, 4))
        s2s.append({"source": " ".join(w), "target": " ".join(w[: rng.randint(1, len(w))])})
    (root / "s2s.jsonl").write_text("".join(json.dumps(t) + "\n" for t in s2s), encoding="utf-8")
    out["s2s"] = root / "s2s.jsonl"
    return out


def finetune_cfg(env: dict[str, Path], **kw) -> FinetuneConfig:
    """A 1-epoch fp32 CPU classification run on ``env``'s encoder; ``kw`` overrides any field."""
    from transferlab.finetune import FinetuneConfig

    base = dict(model=str(env["encoder"]), train_file=str(env["cls_train"]), validation_file=str(env["cls_val"]),
                epochs=1, lr=1e-3, dtype="fp32", device="cpu", quiet=True, eval_every=1, eval_on_test=False,
                warmup=0.0)
    base.update(kw)
    return FinetuneConfig(**base)


# ----------------------------------------------------------------------------- kill -9 harness
def run_cli(*argv: str) -> subprocess.Popen:
    """`transferlab ARGV` in a fresh process, as a user would run it: every run of a comparison
    starts from the same interpreter state, so nothing an earlier test did in this (pytest)
    process can make one side differ.

    Args:
        argv: the command line after ``transferlab``.

    Returns:
        The running process (stdout and stderr piped).
    """
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "transferlab", *argv], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen) -> str:
    """Wait for ``proc`` (a run_cli process), assert it succeeded and return its stdout."""
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()[-2000:]
    return out.decode()


def kill_at_checkpoint(proc: subprocess.Popen, checkpoint: Path, poll: float = 0.002) -> None:
    """SIGKILL ``proc`` as soon as ``checkpoint`` exists (possibly while it writes the next one).

    Args:
        proc: a run_cli process.
        checkpoint: the checkpoint folder to wait for (at most 120 s, or until the process ends).
        poll: seconds between looks.
    """
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(poll)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
