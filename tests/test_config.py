"""Config: presets, validation errors, dotted overrides, round-trips."""

import dataclasses
import json

import pytest

from transferlab.config import (
    Activation, Family, ModelConfig, Position, apply_overrides, get_preset, list_presets,
)
from transferlab.errors import ConfigError


def test_presets_validate_and_roundtrip():
    for name in list_presets():
        cfg = get_preset(name)
        again = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
        assert again == cfg, name


def test_get_preset_returns_independent_copies():
    a = get_preset("bert-mini")
    a.heads["nsp"] = {}
    assert "nsp" not in get_preset("bert-mini").heads


def test_unknown_preset_names_the_known_ones():
    with pytest.raises(ConfigError, match="unknown preset 'bert-huge'.*bert-mini"):
        get_preset("bert-huge")


def test_heads_not_dividing_hidden_size_is_named():
    with pytest.raises(ConfigError, match="d_model=100 is not divisible by model.n_heads=3"):
        get_preset("bert-mini", d_model=100, n_heads=3)


def test_dotted_overrides_coerce_types():
    cfg = get_preset("gpt-mini")
    apply_overrides(cfg, ["model.n_layers=2", "activation=swiglu", "position=rotary", "bias=false",
                          "dropout=0.0"], prefix="model")
    assert (cfg.n_layers, cfg.activation, cfg.position, cfg.bias, cfg.dropout) == (
        2, Activation.SWIGLU, Position.ROTARY, False, 0.0)


def test_dotted_overrides_of_optional_fields():
    """``X | None`` fields (``finetune.tokenizer=DIR``, ``finetune.task=NAME``) take a value or none."""
    from transferlab.finetune.config import FinetuneConfig

    cfg = FinetuneConfig(model="builtin:minilm", task="imdb")
    apply_overrides(cfg, ["finetune.tokenizer=tok-dir", "finetune.task=rotten-tomatoes"], prefix="finetune")
    assert (cfg.tokenizer, cfg.task) == ("tok-dir", "rotten-tomatoes")
    apply_overrides(cfg, ["tokenizer=none"], prefix="finetune")
    assert cfg.tokenizer is None
    m = get_preset("bert-mini")
    apply_overrides(m, ["embedding_size=64"], prefix="model")  # int | None
    assert m.embedding_size == 64
    with pytest.raises(ConfigError, match="expected int"):
        apply_overrides(get_preset("bert-mini"), ["embedding_size=big"])


@pytest.mark.parametrize("item, message", [
    ("n_layers=two", "expected int"),
    ("activation=tanh", "gelu | gelu_tanh | relu | swiglu | geglu"),
    ("n_layer=2", "unknown field 'n_layer'"),
    ("n_layers", "expected key=value"),
])
def test_bad_overrides_say_what_was_expected(item, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(get_preset("bert-mini"), [item])


def test_from_dict_rejects_unknown_fields_and_bad_enums():
    d = get_preset("bart-mini").to_dict()
    with pytest.raises(ConfigError, match="unknown field.*n_layer"):
        ModelConfig.from_dict({**d, "n_layer": 3})
    with pytest.raises(ConfigError, match="family: 'decoder-only' is not one of"):
        ModelConfig.from_dict({**d, "family": "decoder-only"})
    assert ModelConfig.from_dict(d).family == Family.ENCODER_DECODER


def test_type_embeddings_only_for_encoders():
    with pytest.raises(ConfigError, match="type_vocab_size"):
        dataclasses.replace(get_preset("gpt-mini"), type_vocab_size=2).validate()


def test_family_module_is_imported_on_first_use(tmp_path, monkeypatch):
    """A family named in FAMILY_MODULES registers when its name is first resolved (no import line)."""
    import sys

    from transferlab import config as C

    (tmp_path / "lazy_family_mod.py").write_text(
        "from transferlab.config import register_family_spec\nregister_family_spec('lazy-x', causal=True)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(C.FAMILY_MODULES, "lazy-x", "lazy_family_mod")
    monkeypatch.delitem(C.FAMILY_SPECS, "lazy-x", raising=False)
    try:
        assert "lazy_family_mod" not in sys.modules
        with pytest.raises(ConfigError, match="lazy-x"):  # listed among the known names before import
            C.resolve_family("nope")
        assert C.resolve_family("lazy-x") == "lazy-x"
        assert "lazy_family_mod" in sys.modules and C.FAMILY_SPECS["lazy-x"].causal
    finally:
        C.FAMILY_SPECS.pop("lazy-x", None)
        sys.modules.pop("lazy_family_mod", None)
