"""specials.SpecialIds: the one rule for pad/bos/eos/decoder start reproduces each former site."""

from types import SimpleNamespace

from transferlab.config import get_preset
from transferlab.specials import SpecialIds


def _tok(**ids):
    base = dict(pad_token_id=None, bos_token_id=None, eos_token_id=None, cls_token_id=None, sep_token_id=None,
                mask_token_id=None, unk_token_id=None, kind="bpe")
    return SimpleNamespace(**{**base, **ids})


def test_pad_falls_back_to_eos_then_zero():
    assert SpecialIds.resolve(tokenizer=_tok(eos_token_id=5)).pad == 5  # clm, pretrain, span corruption
    assert SpecialIds.resolve(tokenizer=_tok(pad_token_id=3, eos_token_id=5)).pad == 3
    assert SpecialIds.resolve(tokenizer=_tok()).pad == 0
    cfg = get_preset("gpt-mini", pad_token_id=-1, eos_token_id=7)
    assert SpecialIds.resolve(cfg).pad == 7  # generation without a tokenizer: config pad, else eos
    assert SpecialIds.resolve(cfg, pad=2).pad == 2  # an explicit id wins


def test_bert_vocabulary_ends_with_sep_and_begins_with_cls():
    ids = SpecialIds.resolve(tokenizer=_tok(pad_token_id=0, cls_token_id=2, sep_token_id=3, mask_token_id=4))
    assert (ids.pad, ids.bos, ids.eos, ids.mask, ids.cls, ids.sep) == (0, 2, 3, 4, 2, 3)


def test_decoder_start_is_the_configs_else_pad_for_t5_else_eos():
    bart = get_preset("bart-mini", decoder_start_token_id=-1, eos_token_id=2, pad_token_id=1)
    assert SpecialIds.resolve(bart).decoder_start == 2
    assert SpecialIds.resolve(bart.replace(decoder_start_token_id=0)).decoder_start == 0
    t5_tok = _tok(pad_token_id=0, eos_token_id=1, kind="unigram")
    assert SpecialIds.resolve(tokenizer=t5_tok).decoder_start == 0  # T5 starts from pad
    assert SpecialIds.resolve(bart, decoder_start=9).decoder_start == 9  # an objective's own start
    assert SpecialIds.resolve(get_preset("gpt-mini")).decoder_start is None  # decoders have none


def test_config_fields_round_trip():
    ids = SpecialIds.resolve(tokenizer=_tok(pad_token_id=0, eos_token_id=1, kind="unigram"))
    assert ids.config_fields() == {"pad_token_id": 0, "bos_token_id": -1, "eos_token_id": 1,
                                   "decoder_start_token_id": 0}
