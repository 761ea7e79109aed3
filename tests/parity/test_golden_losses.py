"""Golden loss trajectories: fixed seed, tiny model, 5 optimizer steps per objective, fp32 with
deterministic algorithms. A change anywhere in the path (init, masking/noise, collation, loss
normalisation, optimizer, schedule) moves these numbers; if the change is intended, regenerate
them with ``python tests/parity/test_golden_losses.py`` and paste the printed table below.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from transferlab.config import ModelConfig
from transferlab.models import build_model
from transferlab.objectives import SpecialIds, build_objective
from transferlab.training.config import TrainConfig
from transferlab.training.loop import Trainer

V = 96

GOLDEN = {
    "mlm": [4.554279, 4.565574, 4.578924, 4.445603, 4.583709],
    "nsp": [5.317480, 5.273607, 5.261072, 5.313929, 5.199852],
    "electra": [39.134723, 39.111292, 37.731213, 36.041271, 34.797343],
    "clm": [4.557108, 4.568072, 4.518826, 4.478003, 4.453478],
    "denoise": [4.564418, 4.585705, 4.535856, 4.512965, 4.485294],
    "span-corruption": [4.570259, 4.563039, 4.544722, 4.528077, 4.507569],
    "plm": [4.578763, 4.576155, 4.565944, 4.571376, 4.586005],
    "mtlm": [4.566614, 4.595801, 4.594427, 4.502287, 4.508681],  # per-example MLM streams (8062112)
    "mass": [4.563219, 4.561638, 4.537928, 4.537873, 4.571555],
}


def shards(seed: int = 0) -> SimpleNamespace:
    """120 documents of 2-6 sentences of 3-12 ordinary tokens (ids 24..V-1)."""
    r = np.random.default_rng(seed)
    toks, docs, sents = [], [0], [0]
    n = 0
    for _ in range(120):
        for _ in range(r.integers(2, 7)):
            s = r.integers(24, V, r.integers(3, 13))
            toks.append(s)
            n += len(s)
            sents.append(n)
        docs.append(n)
    return SimpleNamespace(tokens=np.concatenate(toks).astype(np.int64), doc_offsets=np.asarray(docs, np.int64),
                           sent_offsets=np.asarray(sents, np.int64))


def specials(name: str) -> SpecialIds:
    if name in ("mlm", "nsp", "electra", "plm", "mtlm"):  # BERT-style: [PAD] [UNK] [CLS] [SEP] [MASK]
        return SpecialIds(V, pad_token_id=0, unk_token_id=1, cls_token_id=2, sep_token_id=3, mask_token_id=4)
    if name == "clm":
        return SpecialIds(V, eos_token_id=5, bos_token_id=5)
    if name in ("denoise", "mass"):  # BART: <s> <pad> </s> <mask> <unk>
        return SpecialIds(V, bos_token_id=0, pad_token_id=1, eos_token_id=2, mask_token_id=3, unk_token_id=4)
    return SpecialIds(V, pad_token_id=0, eos_token_id=1, unk_token_id=2, sentinel_token_ids=tuple(range(23, 3, -1)))


def model_config(name: str, sp: SpecialIds) -> ModelConfig:
    common = dict(vocab_size=V, d_model=32, n_heads=2, d_ff=64, max_positions=64, dropout=0.0,
                  attention_dropout=0.0, pad_token_id=sp.pad_token_id or 0)
    if name in ("mlm", "nsp", "electra", "plm", "mtlm"):
        heads = {"nsp": {"lm": {}, "nsp": {}}, "electra": {"rtd": {}}}.get(name, {"lm": {}})
        return ModelConfig(family="encoder", n_layers=2, type_vocab_size=2, pooler=True, lm_head_transform=True,
                           lm_head_bias=True, heads=heads, **common)
    if name == "clm":
        return ModelConfig(family="decoder", n_layers=2, prenorm=True, final_norm=True, embedding_norm=False,
                           norm_eps=1e-5, heads={"lm": {}}, **common)
    if name in ("denoise", "mass"):  # mass starts decoding with [MASK] (MASS's [M])
        return ModelConfig(family="encoder-decoder", n_layers=1, position_offset=2, norm_eps=1e-5,
                           lm_head_bias=True, decoder_start_token_id=2 if name == "denoise" else 3,
                           heads={"lm": {}}, **common)
    return ModelConfig(family="encoder-decoder", n_layers=1, norm="rmsnorm", norm_eps=1e-6, prenorm=True,
                       embedding_norm=False, final_norm=True, activation="relu", position="relative", bias=False,
                       attn_scale=False, scale_logits=True, decoder_start_token_id=0, heads={"lm": {}},
                       **{**common, "d_ff": 64})


def trajectory(name: str, out: Path) -> list[float]:
    torch.use_deterministic_algorithms(True)
    try:
        sp = specials(name)
        objective = build_objective(name, sp)
        torch.manual_seed(0)
        model = build_model(model_config(name, sp))
        objective.check_model(model.config)
        cfg = TrainConfig(batch_size=4, seq_len=32, max_steps=5, lr=1e-2, warmup=0.2, eval_every=0, save_every=0,
                          log_every=1, dtype="fp32", seed=0, progress=False, tensorboard=False, num_threads=1)
        Trainer(model, objective, objective.dataset(shards(), cfg.seq_len), cfg, out).fit()
    finally:
        torch.use_deterministic_algorithms(False)
    return [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"train"' in x]


@pytest.mark.parametrize("name", list(GOLDEN))
def test_golden_loss_trajectory(name, tmp_path):
    losses = trajectory(name, tmp_path)
    assert len(losses) == 5
    np.testing.assert_allclose(losses, GOLDEN[name], rtol=0, atol=2e-4, err_msg=name)


if __name__ == "__main__":  # regenerate: python tests/parity/test_golden_losses.py
    import tempfile

    torch.set_num_threads(1)
    print("GOLDEN = {")
    for n in GOLDEN:
        with tempfile.TemporaryDirectory() as d:
            print(f"    {n!r}: [{', '.join(f'{x:.6f}' for x in trajectory(n, Path(d)))}],")
    print("}")
    sys.exit(0)
