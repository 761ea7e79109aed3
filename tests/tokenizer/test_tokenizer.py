"""Tokenizer: training, loading real vocabularies, parity with `transformers`, save/load, CLI."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from transferlab.cli import main
from transferlab.data.builtin import gpt2_files, minilm_dir
from transferlab.errors import ConfigError, DataError
from transferlab.tokenizer import Tokenizer

SENTENCES = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "Naïve café owners in Zürich don't like résumés — or do they?",
    "I can't believe it's not butter!!! 100% sure... $3.50, 2,000 items; e-mail: a.b@c.com",
    "中文字符 and 日本語 mixed with English.",
    "Emojis 😀🚀 and symbols ©®™ ∑∫",
    "   leading and trailing spaces   ",
    "tabs\tand\nnewlines\r\nhere",
    "",
    "a" * 150 + " supercalifragilisticexpialidocious antidisestablishmentarianism",
    "Special tokens inside text: [MASK] [SEP] <|endoftext|> ok",
]
PAIRS = [
    ("What is the capital of France?", "Paris is the capital and largest city of France."),
    ("Short.", "A much longer second segment that will need to be truncated when max_length is small."),
    ("One more first segment with several words in it", "tiny"),
]

CORPUS = [
    "The cat sat on the mat. The dog sat on the log.",
    "Transfer learning: pre-train, then fine-tune!",
    "Tokenizers split text into sub-word units; unknown words become pieces.",
    "Naïve résumé café, 100% sure... (really) [maybe]",
] * 25


# ---------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def bert_pair():
    transformers = pytest.importorskip("transformers")
    vocab = str(minilm_dir() / "vocab.txt")
    return Tokenizer.from_pretrained(vocab), transformers.BertTokenizerFast(vocab=vocab, do_lower_case=True)


@pytest.fixture(scope="module")
def gpt2_pair():
    transformers = pytest.importorskip("transformers")
    enc, merges = gpt2_files()
    hf = transformers.GPT2TokenizerFast(vocab=str(enc), merges=str(merges), pad_token="<|endoftext|>")
    return Tokenizer.from_pretrained("builtin:gpt2", pad_token="<|endoftext|>"), hf


@pytest.fixture(scope="module")
def trained():
    return {k: Tokenizer.train(CORPUS, kind=k, vocab_size=300, n_sentinels=8) for k in ("wordpiece", "bpe", "unigram")}


def _hf(hf, side, *args, **kw):
    hf.padding_side = side
    return hf(*args, **kw)


# ---------------------------------------------------------------------------------- parity: BERT
@pytest.mark.parametrize("side", ["right", "left"])
def test_bert_vocab_matches_transformers(bert_pair, side):
    ours, hf = bert_pair
    ours.padding_side = side
    got = ours(SENTENCES, padding=True)
    want = _hf(hf, side, SENTENCES, padding=True)
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert got[key] == want[key], key
    got = ours([a for a, _ in PAIRS], [b for _, b in PAIRS], padding=True, truncation=True, max_length=16)
    want = _hf(hf, side, [a for a, _ in PAIRS], [b for _, b in PAIRS], padding=True, truncation=True, max_length=16)
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert got[key] == want[key], key
    ours.padding_side = "right"


def test_bert_offsets_and_single_text_match_transformers(bert_pair):
    ours, hf = bert_pair
    for text in SENTENCES[:6]:
        got = ours(text, return_offsets_mapping=True)
        want = hf(text, return_offsets_mapping=True)
        assert got["input_ids"] == want["input_ids"]
        assert [tuple(o) for o in got["offset_mapping"]] == [tuple(o) for o in want["offset_mapping"]]
    ids = ours(SENTENCES[:4], padding=True)["input_ids"]
    assert ours.batch_decode(ids, skip_special_tokens=True) == hf.batch_decode(ids, skip_special_tokens=True)


def test_bert_tokenizer_json_equals_vocab_txt(bert_pair):
    from_vocab, _ = bert_pair
    from_json = Tokenizer.from_pretrained("builtin:minilm")
    assert from_json.kind == "wordpiece" and from_json.vocab_size == 30522
    assert (from_json.pad_token_id, from_json.cls_token_id, from_json.sep_token_id, from_json.mask_token_id) == (0, 101, 102, 103)
    a = from_json(SENTENCES, padding=True)
    b = from_vocab(SENTENCES, padding=True)
    assert a["input_ids"] == b["input_ids"]
    # the shipped tokenizer.json pads/truncates to 128 by itself: we must not
    long = from_json("word " * 300)["input_ids"]
    assert len(long) == 302


# ---------------------------------------------------------------------------------- parity: GPT-2
def test_gpt2_known_ids(gpt2_pair):
    ours, _ = gpt2_pair
    assert ours.encode("Hello world") == [15496, 995]
    assert ours.vocab_size == 50257 and ours.eos_token_id == ours.bos_token_id == 50256


@pytest.mark.parametrize("side", ["right", "left"])
def test_gpt2_matches_transformers(gpt2_pair, side):
    ours, hf = gpt2_pair
    ours.padding_side = side
    got = ours(SENTENCES, padding=True)
    want = _hf(hf, side, SENTENCES, padding=True)
    assert got["input_ids"] == want["input_ids"]
    assert got["attention_mask"] == want["attention_mask"]
    got = ours(SENTENCES, padding="max_length", truncation=True, max_length=12)
    want = _hf(hf, side, SENTENCES, padding="max_length", truncation=True, max_length=12)
    assert got["input_ids"] == want["input_ids"]
    assert got["attention_mask"] == want["attention_mask"]
    ours.padding_side = "right"


def test_gpt2_roundtrip_is_lossless(gpt2_pair):
    ours, hf = gpt2_pair
    for text in SENTENCES:
        ids = ours.encode(text)
        assert ours.decode(ids) == text
        assert ours.decode(ids) == hf.decode(ids)


# ---------------------------------------------------------------------------------- training
def test_trained_special_tokens(trained):
    wp, bpe, uni = trained["wordpiece"], trained["bpe"], trained["unigram"]
    assert [wp.pad_token_id, wp.unk_token_id, wp.cls_token_id, wp.sep_token_id, wp.mask_token_id] == [0, 1, 2, 3, 4]
    assert wp.bos_token_id is None and wp.sentinel_token_ids == []
    assert bpe.bos_token_id == bpe.eos_token_id == bpe.convert_tokens_to_ids("<|endoftext|>")
    assert bpe.pad_token_id is not None and bpe.mask_token_id is not None
    assert (uni.pad_token_id, uni.eos_token_id, uni.unk_token_id) == (0, 1, 2)
    assert len(uni.sentinel_token_ids) == 8
    assert uni.sentinel_token_ids[0] == uni.vocab_size - 1  # <extra_id_0> on top, as in T5
    assert uni.convert_ids_to_tokens(uni.sentinel_token_ids[:2]) == ["<extra_id_0>", "<extra_id_1>"]
    assert set(uni.sentinel_token_ids) <= set(uni.all_special_ids)
    for tok in trained.values():
        assert len(tok) == tok.vocab_size <= 300
        assert max(tok.get_vocab().values()) == tok.vocab_size - 1


def test_trained_roundtrips(trained):
    text = "The dog sat on the mat."
    assert trained["wordpiece"].decode(trained["wordpiece"].encode(text)) == text.lower()
    assert trained["bpe"].decode(trained["bpe"].encode(text)) == text
    assert trained["unigram"].decode(trained["unigram"].encode(text)) == text
    # special tokens around sequences: [CLS] A [SEP] for WordPiece, A </s> for unigram, none for BPE
    wp = trained["wordpiece"]
    ids = wp(text)["input_ids"]
    assert ids[0] == wp.cls_token_id and ids[-1] == wp.sep_token_id
    uni = trained["unigram"]
    assert uni(text)["input_ids"][-1] == uni.eos_token_id
    assert trained["bpe"](text)["input_ids"] == trained["bpe"].encode(text)


@pytest.mark.parametrize("kind", ["wordpiece", "bpe", "unigram"])
def test_training_is_deterministic(kind):
    # the Rust trainers number WordPiece vocabularies in hash order and leave Unigram ties and
    # last-bit scores to chance; Tokenizer.train canonicalises both. Unigram scores can still
    # differ around 1e-10 (float sums in hash order), so only its pieces are compared exactly.
    from transferlab.data import read_documents

    texts = [d.text for d in read_documents("builtin:news")][:50]
    a, b = (Tokenizer.train(texts, kind=kind, vocab_size=400, n_sentinels=5) for _ in range(2))
    if kind == "unigram":
        assert set(a.get_vocab()) == set(b.get_vocab())
        assert a.sentinel_token_ids == b.sentinel_token_ids
    else:
        assert a.fingerprint == b.fingerprint and a.get_vocab() == b.get_vocab()


def test_lowercase_option():
    cased = Tokenizer.train(CORPUS, kind="wordpiece", vocab_size=200, lowercase=False)
    assert any(t[0].isupper() for t in cased.get_vocab() if t[0].isalpha())
    assert cased.decode(cased.encode("The cat")) == "The cat"


def test_continuation_and_special_masks(trained):
    wp = trained["wordpiece"]
    cont = wp.continuation_mask()
    assert cont.shape == (wp.vocab_size,) and cont.dtype == bool
    vocab = wp.get_vocab()
    assert all(cont[i] == t.startswith("##") for t, i in vocab.items() if i not in wp.all_special_ids)
    assert not cont[wp.all_special_ids].any()
    bpe = trained["bpe"]
    ids = bpe.encode("pre-train the tokenizers")
    toks = bpe.convert_ids_to_tokens(ids)
    assert [bool(bpe.continuation_mask()[i]) for i in ids] == [not t.startswith("Ġ") for t in toks]
    uni = trained["unigram"]
    um = uni.continuation_mask()
    assert not um[uni.sentinel_token_ids].any()
    ids = uni.encode("the tokenizers")
    assert not um[ids[0]]  # the first piece starts with ▁
    enc = wp("the cat", "sat")
    assert wp.special_tokens_mask(enc["input_ids"]) == [1, 0, 0, 1, 0, 1]


def test_train_from_files_and_errors(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("\n\n".join(CORPUS), encoding="utf-8")
    tok = Tokenizer.train([str(f)], kind="bpe", vocab_size=300)
    assert tok.encode("The cat") == Tokenizer.train([f], kind="bpe", vocab_size=300).encode("The cat")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\n\xff\xfe oops\n")
    with pytest.raises(DataError, match=r"bad.txt:2: invalid UTF-8"):
        Tokenizer.train([str(bad)], kind="bpe", vocab_size=300)
    with pytest.raises(DataError, match="no such file"):
        Tokenizer.train(["missing/corpus.txt"], kind="bpe")
    with pytest.raises(DataError, match="empty corpus"):
        Tokenizer.train([], kind="bpe")
    with pytest.raises(ConfigError, match="unknown tokenizer kind"):
        Tokenizer.train(CORPUS, kind="char")


# ---------------------------------------------------------------------------------- call API
def test_call_api_shapes(trained):
    tok = trained["wordpiece"]
    single = tok("the cat sat")
    assert isinstance(single["input_ids"][0], int) and single.input_ids == single["input_ids"]
    batch = tok(["the cat", "the cat sat on the mat"], padding=True, return_tensors="pt")
    assert tuple(batch["input_ids"].shape) == (2, batch["attention_mask"].shape[1])
    assert batch["attention_mask"][0].tolist().count(0) > 0
    arr = tok(["a", "the cat sat"], padding="max_length", max_length=10, return_tensors="np")
    assert arr["input_ids"].shape == (2, 10) and arr["input_ids"].dtype == np.int64
    m8 = tok(["the cat sat"], padding=True, pad_to_multiple_of=8)
    assert len(m8["input_ids"][0]) == 8
    with pytest.raises(ConfigError, match="padding=True"):
        tok(["a", "the cat sat"], return_tensors="pt")
    tok.padding_side = "left"
    left = tok(["the cat", "the cat sat on the mat"], padding=True)
    assert left["input_ids"][0][0] == tok.pad_token_id and left["attention_mask"][0][0] == 0
    tok.padding_side = "right"
    with pytest.raises(ConfigError):
        tok.padding_side = "middle"
    offs = tok("The cat", return_offsets_mapping=True)["offset_mapping"]
    assert offs[0] == (0, 0) and offs[1] == (0, 3) and offs[-1] == (0, 0)
    trunc = tok(["the cat sat on the mat"] * 2, ["the dog sat on the log"] * 2, truncation="only_second", max_length=11)
    assert all(len(r) == 11 for r in trunc["input_ids"]) and trunc["token_type_ids"][0][-1] == 1


def test_decode_tensors_and_skip_special(trained):
    torch = pytest.importorskip("torch")
    tok = trained["wordpiece"]
    batch = tok(["the cat sat", "the dog"], padding=True, return_tensors="pt")
    texts = tok.batch_decode(batch["input_ids"], skip_special_tokens=True)
    assert texts == ["the cat sat", "the dog"]
    assert tok.decode(batch["input_ids"][1]).startswith("[CLS] the dog [SEP]")
    assert tok.decode(torch.tensor(tok.encode("the mat"))) == "the mat"


def test_gpt2_without_pad_token_says_how_to_fix():
    tok = Tokenizer.from_pretrained("builtin:gpt2")
    assert tok.pad_token_id is None
    with pytest.raises(ConfigError, match="pad_token"):
        tok(["a", "b c"], padding=True)
    tok.pad_token = tok.eos_token
    assert tok(["a", "b c"], padding=True)["input_ids"][0][-1] == 50256


# ---------------------------------------------------------------------------------- save / load
@pytest.mark.parametrize("kind", ["wordpiece", "bpe", "unigram"])
def test_save_load_roundtrip(trained, tmp_path, kind):
    tok = trained[kind]
    tok.padding_side = "left"
    tok.save(tmp_path / "tok")
    tok.padding_side = "right"
    back = Tokenizer.from_pretrained(tmp_path / "tok")
    assert back.fingerprint == tok.fingerprint
    assert back.kind == kind and back.padding_side == "left"
    assert back.special_tokens == tok.special_tokens and back.sentinel_token_ids == tok.sentinel_token_ids
    assert back(CORPUS[:4])["input_ids"] == tok(CORPUS[:4])["input_ids"]
    assert pickle.loads(pickle.dumps(tok)).encode(CORPUS[0]) == tok.encode(CORPUS[0])
    cfg = json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text())
    assert cfg["transferlab"]["kind"] == kind


def test_fingerprints_differ_and_are_stable(trained, tmp_path):
    fps = {t.fingerprint for t in trained.values()}
    assert len(fps) == 3
    gpt2 = Tokenizer.from_pretrained("builtin:gpt2")
    gpt2.save(tmp_path / "g")
    assert Tokenizer.from_pretrained(tmp_path / "g").fingerprint == gpt2.fingerprint


def test_saved_folder_loads_in_transformers(trained, tmp_path):
    transformers = pytest.importorskip("transformers")
    tok = trained["wordpiece"]
    tok.save(tmp_path / "tok")
    hf = transformers.PreTrainedTokenizerFast.from_pretrained(str(tmp_path / "tok"))
    assert hf(CORPUS[:3])["input_ids"] == tok(CORPUS[:3])["input_ids"]
    assert hf.pad_token_id == tok.pad_token_id and hf.mask_token_id == tok.mask_token_id


def test_from_pretrained_gpt2_folder_and_errors(tmp_path):
    enc, merges = gpt2_files()
    d = tmp_path / "gpt2"
    d.mkdir()
    (d / "encoder.json").write_bytes(enc.read_bytes())
    (d / "vocab.bpe").write_bytes(merges.read_bytes())
    assert Tokenizer.from_pretrained(d).encode("Hello world") == [15496, 995]
    with pytest.raises(DataError, match="no such tokenizer"):
        Tokenizer.from_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no tokenizer found"):
        Tokenizer.from_pretrained(tmp_path / "empty")
    with pytest.raises(DataError, match="unknown built-in tokenizer"):
        Tokenizer.from_pretrained("builtin:t5")


# ---------------------------------------------------------------------------------- CLI
def test_cli_train_and_encode(tmp_path, capsys):
    f = tmp_path / "c.txt"
    f.write_text("\n\n".join(CORPUS), encoding="utf-8")
    out = tmp_path / "tok"
    rc = main(["tokenizer", "train", "--kind", "unigram", "--vocab-size", "150", "--sentinels", "4",
               "--input", str(f), "--out", str(out)])
    assert rc == 0
    assert "trained unigram tokenizer" in capsys.readouterr().out
    assert main(["tokenizer", "encode", "--tokenizer", str(out), "the cat sat"]) == 0
    printed = capsys.readouterr().out
    tok = Tokenizer.from_pretrained(out)
    assert f"ids:    {' '.join(map(str, tok('the cat sat')['input_ids']))}" in printed
    assert "tokens: " in printed


def test_cli_bad_input_is_one_line_error(tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok\n\xc3\x28\n")
    rc = main(["tokenizer", "train", "--input", str(bad), "--out", str(tmp_path / "t")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error:") and "\n" not in err and "bad.txt:2" in err


# ---------------------------------------------------------------------------------- transformers 5 AutoTokenizer
def _auto(d):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(d))


@pytest.mark.parametrize("name,cls", [
    ("wordpiece", "BertTokenizerFast"), ("wordpiece_cased", "BertTokenizerFast"), ("minilm", "BertTokenizerFast"),
    ("bpe", "GPT2TokenizerFast"), ("gpt2", "GPT2TokenizerFast"),
    # no named class rebuilds these pipelines (a lower-casing byte-level BPE; our NFKC unigram):
    # TokenizersBackend loads tokenizer.json unchanged
    ("bpe_lower", "TokenizersBackend"), ("unigram", "TokenizersBackend"),
])
def test_auto_tokenizer_encodes_as_we_do(trained, tmp_path, name, cls):
    """transformers 5's AutoTokenizer (default arguments) on a saved folder gives our ids, type ids
    (BERT-style), specials, vocabulary size and truncation limit; the class named is the one
    that rebuilds our pipeline exactly."""
    tok = {"minilm": lambda: Tokenizer.from_pretrained("builtin:minilm"),
           "gpt2": lambda: Tokenizer.from_pretrained("builtin:gpt2"),
           "bpe_lower": lambda: Tokenizer.train(CORPUS, kind="bpe", vocab_size=300, lowercase=True),
           "wordpiece_cased": lambda: Tokenizer.train(CORPUS, kind="wordpiece", vocab_size=300, lowercase=False),
           }.get(name, lambda: trained[name])()
    tok.save_pretrained(tmp_path / "t", model_max_length=48)
    cfg = json.loads((tmp_path / "t" / "tokenizer_config.json").read_text())
    assert cfg["tokenizer_class"] == cls
    hf = _auto(tmp_path / "t")
    bert = tok.kind == "wordpiece"
    assert hf.model_input_names == (["input_ids", "token_type_ids", "attention_mask"] if bert
                                    else ["input_ids", "attention_mask"])
    assert hf.model_max_length == 48 and len(hf) == len(tok)
    for role in ("pad", "unk", "cls", "sep", "mask", "bos", "eos"):
        assert getattr(hf, f"{role}_token_id") == getattr(tok, f"{role}_token_id"), role
    for s in SENTENCES:
        assert hf(s)["input_ids"] == tok(s)["input_ids"], s
        assert hf.decode(hf(s)["input_ids"]) == tok.decode(tok(s)["input_ids"])
    for a, b in PAIRS:
        h, o = hf(a, b), tok(a, b)
        assert h["input_ids"] == o["input_ids"]
        if bert:
            assert h["token_type_ids"] == o["token_type_ids"] and 1 in h["token_type_ids"]
    long = " ".join(SENTENCES) * 40
    assert hf(long, truncation=True)["input_ids"] == tok(long, truncation=True, max_length=48)["input_ids"]
    assert len(hf(long, truncation=True)["input_ids"]) == 48


def test_unigram_sentinel_ids_survive_auto_tokenizer(trained, tmp_path):
    tok = trained["unigram"]
    tok.save(tmp_path / "t")
    hf = _auto(tmp_path / "t")
    assert hf.convert_tokens_to_ids(tok.sentinel_tokens) == tok.sentinel_token_ids
    assert hf("a <extra_id_0> b")["input_ids"] == tok("a <extra_id_0> b")["input_ids"]


def test_save_beside_a_model_takes_its_positions_and_token_types(trained, tmp_path):
    """Saved next to a model's config.json the tokenizer records the model's limit (so pipelines
    can truncate) and whether the model reads token type ids; its own limit still round-trips."""
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"transferlab_version": "0", "family": "decoder", "max_positions": 96,
                                               "type_vocab_size": 0}))
    tok = Tokenizer.train(CORPUS, kind="wordpiece", vocab_size=300, model_max_length=512)
    tok.save(d)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    assert cfg["model_max_length"] == 96 and cfg["model_input_names"] == ["input_ids", "attention_mask"]
    assert json.loads((d / "special_tokens_map.json").read_text())["cls_token"] == "[CLS]"
    assert Tokenizer.from_pretrained(d).model_max_length == 512
    (d / "config.json").write_text(json.dumps({"model_type": "roberta", "max_position_embeddings": 66,
                                               "pad_token_id": 1, "type_vocab_size": 1}))
    trained["bpe"].save(d)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    assert cfg["model_max_length"] == 64 and cfg["model_input_names"] == ["input_ids", "attention_mask"]


def _t5_style(trained) -> Tokenizer:
    """Our trained unigram re-plumbed as transformers' T5Tokenizer builds it (no normaliser,
    whitespace split + metaspace, ``</s>`` appended): the case T5TokenizerFast fits."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, pre_tokenizers, processors

    base = trained["unigram"]
    tk = Backend.from_str(base.backend.to_str())
    meta = dict(replacement="\u2581", prepend_scheme="always", split=True)
    tk.normalizer = None
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(**meta)])
    tk.decoder = decoders.Metaspace(**meta)
    tk.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                      special_tokens=[("</s>", base.eos_token_id)])
    return Tokenizer(tk, "unigram", base.special_tokens, base.sentinel_tokens)


def _roberta_style(trained) -> Tokenizer:
    """A byte-level BPE with ``<s> A </s>`` added, as RoBERTa/BART tokenizers are."""
    from tokenizers import AddedToken
    from tokenizers import Tokenizer as Backend
    from tokenizers import processors

    tk = Backend.from_str(trained["bpe"].backend.to_str())
    tk.add_special_tokens([AddedToken("<s>", special=True, normalized=False),
                           AddedToken("</s>", special=True, normalized=False)])
    tk.post_processor = processors.RobertaProcessing(("</s>", tk.token_to_id("</s>")), ("<s>", tk.token_to_id("<s>")),
                                                     True, False)
    return Tokenizer(tk, "bpe", {"bos": "<s>", "eos": "</s>", "cls": "<s>", "sep": "</s>", "pad": "<pad>",
                                 "mask": "<mask>"})


@pytest.mark.parametrize("style,model_type,cls", [
    ("t5", None, "T5TokenizerFast"), ("roberta", "roberta", "RobertaTokenizerFast"),
    ("roberta", "bart", "BartTokenizerFast"), ("roberta", None, "GPT2TokenizerFast"),
])
def test_t5_roberta_and_bart_classes_where_they_fit(trained, tmp_path, style, model_type, cls):
    tok = _t5_style(trained) if style == "t5" else _roberta_style(trained)
    tok.save(tmp_path / "t", model_type=model_type)
    assert json.loads((tmp_path / "t" / "tokenizer_config.json").read_text())["tokenizer_class"] == cls
    hf = _auto(tmp_path / "t")
    for s in SENTENCES:
        assert hf(s)["input_ids"] == tok(s)["input_ids"], s
    for a, b in PAIRS:
        assert hf(a, b)["input_ids"] == tok(a, b)["input_ids"]
    assert hf.eos_token_id == tok.eos_token_id and hf.pad_token_id == tok.pad_token_id
    if style == "t5":
        assert hf.convert_tokens_to_ids(tok.sentinel_tokens) == tok.sentinel_token_ids


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"transferlab_version": "0", "max_positions": "many"}'])
def test_save_beside_an_unreadable_config_falls_back_to_the_tokenizer(trained, tmp_path, content):
    (tmp_path / "config.json").write_text(content)
    tok = Tokenizer.train(CORPUS, kind="wordpiece", vocab_size=300, model_max_length=77)
    tok.save(tmp_path)
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert cfg["model_max_length"] == 77 and cfg["tokenizer_class"] == "BertTokenizerFast"
