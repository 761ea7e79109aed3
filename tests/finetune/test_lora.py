"""LoRA: adapters on the block projections, merge for export, adapter-only saving."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tiny import finetune_cfg as _cfg
from transferlab.cli import main
from transferlab.errors import CheckpointError
from transferlab.finetune import evaluate, finetune
from transferlab.finetune.lora import (ADAPTER_CONFIG, ADAPTER_WEIGHTS, LoRAConfig, apply_lora, base_hash, has_lora,
                                       load_adapter, merge_lora, read_adapter_config)
from transferlab.models.model import from_pretrained


@pytest.fixture(scope="module")
def env(finetune_env) -> dict:  # tests/conftest.py: one tiny model per family + task files
    return finetune_env


@pytest.mark.parametrize("family", ["encoder", "decoder", "encoder-decoder"])
def test_merge_gives_the_same_logits_as_the_unmerged_adapter(env, family):
    model = from_pretrained(env[family]).eval()
    ids = torch.randint(5, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    kw = {"decoder_input_ids": ids[:, :5]} if family == "encoder-decoder" else {}
    before = model(input_ids=ids, head="lm", **kw).logits
    counts = apply_lora(model, LoRAConfig(r=4, alpha=8))
    assert counts["adapted_layers"] >= 8 and counts["trainable"] < counts["total"] / 2
    # B starts at zero: the adapted model is the pre-trained one
    torch.testing.assert_close(model(input_ids=ids, head="lm", **kw).logits, before, rtol=0, atol=0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("lora_B"):
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(n)))
    adapted = model(input_ids=ids, head="lm", **kw).logits
    assert float((adapted - before).detach().abs().max()) > 1e-3  # the adapter does something
    merge_lora(model)
    assert not has_lora(model) and not any("lora" in k for k in model.state_dict())
    torch.testing.assert_close(model(input_ids=ids, head="lm", **kw).logits, adapted, rtol=1e-5, atol=1e-5)


def test_finetune_with_lora_saves_merged_model_and_adapter(env, tmp_path, capsys):
    out = tmp_path / "lora"
    res = finetune(_cfg(env, out_dir=str(out), lora_r=4, lora_alpha=8, epochs=2, batch_size=8, lr=5e-3,
                        eval_on_test=False, quiet=False))
    log = capsys.readouterr().out
    assert "LoRA r=4" in log and "trainable parameters of" in log
    # the merged folder has the plain layout and scores like the adapted model did
    merged = load_file(str(out / "model.safetensors"))
    assert not any("lora" in k for k in merged)
    plain = from_pretrained(env["encoder"]).state_dict()
    assert set(merged) - {k for k in merged if k.startswith("heads.")} <= set(plain)
    again = evaluate(out, test_file=str(env["cls_val"]), dtype="fp32", device="cpu")
    assert again == pytest.approx(res.validation, abs=1e-9)
    # only adapted weights moved: embeddings are the base's
    emb = [k for k in merged if "embed" in k]
    assert emb and all(torch.equal(merged[k], plain[k]) for k in emb)
    # the adapter alone, with a pointer to its base and the base's hash
    meta = read_adapter_config(out)
    base = from_pretrained(env["encoder"])
    assert meta["base_model"] == str(env["encoder"]) and meta["base_sha256"] == base_hash(base) and meta["r"] == 4
    adapter = load_file(str(out / ADAPTER_WEIGHTS))
    assert adapter and all(".lora_" in k or k.startswith("heads.") for k in adapter)
    assert sum(v.numel() for v in adapter.values()) < sum(v.numel() for v in merged.values()) / 4
    # base + adapter == merged model
    load_adapter(base, out, str(env["encoder"]))
    base.eval()
    m2 = from_pretrained(out).eval()
    ids = torch.randint(5, base.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(1))
    head = next(iter(m2.heads))
    torch.testing.assert_close(base(input_ids=ids, head=head).logits, m2(input_ids=ids, head=head).logits,
                               rtol=1e-5, atol=1e-5)
    # onto a different base model: a clear error naming both
    other = from_pretrained(env["encoder"])
    with torch.no_grad():
        next(other.parameters()).add_(1e-3)
    with pytest.raises(CheckpointError, match="trained on .*encoder.* not on my-other-model"):
        load_adapter(other, out, "my-other-model")
    assert (out / ADAPTER_CONFIG).is_file()


@pytest.mark.parametrize("flag,value", [("--lora-r", "0"), ("--lora-r", "-2"), ("--lora-targets", "nope")])
def test_bad_lora_settings_are_one_line_errors(env, tmp_path, capsys, flag, value):
    rc = main(["finetune", "--model", str(env["encoder"]), "--train", str(env["cls_train"]), "--out",
               str(tmp_path / "o"), "--lora-r", "4", flag, value, "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: finetune.lora_") and err.count("\n") == 1, err
