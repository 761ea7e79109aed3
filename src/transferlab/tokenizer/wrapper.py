"""The :class:`Tokenizer`: encode / decode / save / load over a Hugging Face ``tokenizers`` pipeline.

The kinds, their special tokens, the vocabularies it loads and the ``transformers``-style call
are told once in the package docstring, :mod:`transferlab.tokenizer`.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from tokenizers import AddedToken, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as _Backend

from ..errors import ConfigError, DataError
from ..utils import atomic_write_text
from .common import _BERT, _DEFAULT_LOWERCASE, _EOT, FORMAT_VERSION, KINDS, SPECIAL_ROLES, _as_list
from .metadata import _HF_ROLES, _hf_tokenizer_class, _model_facts
from .training import (_bpe_pipeline, _canonical_unigram, _canonical_wordpiece, _Counter, _guess_specials,
                       _iter_texts, _read_json, _unigram_pipeline, _wordpiece_pipeline)

__all__ = ["Tokenizer", "BatchEncoding", "KINDS"]


class BatchEncoding(dict):
    """The result of calling a tokenizer: a dict (``input_ids``, ``attention_mask``, ...) whose
    keys are also attributes."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to(self, device: Any) -> "BatchEncoding":
        """Move torch tensors to ``device`` (no-op for lists and arrays)."""
        return BatchEncoding({k: v.to(device) if hasattr(v, "to") else v for k, v in self.items()})



class Tokenizer:
    """A trained or loaded tokenizer (see the module docstring).

    Attributes:
        kind: ``"wordpiece"``, ``"bpe"`` or ``"unigram"``.
        padding_side: ``"right"`` (default) or ``"left"`` (for batched generation).
        model_max_length: default ``max_length`` for truncation/padding, or ``None``.
        lowercase: whether the normaliser lower-cases (informational).
    """

    def __init__(
        self,
        backend: _Backend,
        kind: str,
        special_tokens: dict[str, str | None] | None = None,
        sentinel_tokens: Sequence[str] = (),
        padding_side: str = "right",
        model_max_length: int | None = None,
        lowercase: bool | None = None,
    ) -> None:
        if kind not in KINDS:
            raise ConfigError(f"unknown tokenizer kind {kind!r}; expected one of: {', '.join(KINDS)}")
        backend.no_padding()
        backend.no_truncation()
        self._tk = backend
        self.kind = kind
        self._special: dict[str, str | None] = {r: None for r in SPECIAL_ROLES}
        self._special.update(special_tokens or {})
        self.sentinel_tokens = list(sentinel_tokens)
        self.padding_side = padding_side
        self.model_max_length = model_max_length
        self.lowercase = lowercase
        self._lock = threading.Lock()
        self._fingerprint: str | None = None
        self._cont_mask: np.ndarray | None = None
        # register every special token with the backend so it is never split and is skipped by
        # decode(skip_special_tokens=True)
        toks = [t for t in self._special.values() if t] + self.sentinel_tokens
        missing = [t for t in dict.fromkeys(toks) if self._tk.token_to_id(t) is None]
        known = [t for t in dict.fromkeys(toks) if self._tk.token_to_id(t) is not None]
        self._tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in known + missing])
        self._refresh_ids()

    # ------------------------------------------------------------------ special tokens
    def _refresh_ids(self) -> None:
        for role in SPECIAL_ROLES:
            tok = self._special[role]
            setattr(self, f"{role}_token_id", None if tok is None else self._tk.token_to_id(tok))
        self.sentinel_token_ids = [self._tk.token_to_id(t) for t in self.sentinel_tokens]
        ids = [getattr(self, f"{r}_token_id") for r in SPECIAL_ROLES] + self.sentinel_token_ids
        self.all_special_ids = list(dict.fromkeys(i for i in ids if i is not None))
        self.all_special_tokens = [self._tk.id_to_token(i) for i in self.all_special_ids]
        self._special_set = frozenset(self.all_special_ids)
        self._fingerprint = None
        self._cont_mask = None

    def _set_special(self, role: str, token: str | None) -> None:
        if token is not None and self._tk.token_to_id(token) is None:
            self._tk.add_special_tokens([AddedToken(token, special=True, normalized=False)])
        self._special[role] = token
        self._refresh_ids()

    pad_token = property(lambda self: self._special["pad"], lambda self, t: self._set_special("pad", t))
    unk_token = property(lambda self: self._special["unk"], lambda self, t: self._set_special("unk", t))
    cls_token = property(lambda self: self._special["cls"], lambda self, t: self._set_special("cls", t))
    sep_token = property(lambda self: self._special["sep"], lambda self, t: self._set_special("sep", t))
    mask_token = property(lambda self: self._special["mask"], lambda self, t: self._set_special("mask", t))
    bos_token = property(lambda self: self._special["bos"], lambda self, t: self._set_special("bos", t))
    eos_token = property(lambda self: self._special["eos"], lambda self, t: self._set_special("eos", t))

    @property
    def special_tokens(self) -> dict[str, str | None]:
        """``{role: token}`` for pad, unk, cls, sep, mask, bos, eos (``None`` when absent)."""
        return dict(self._special)

    @property
    def padding_side(self) -> str:
        return self._padding_side

    @padding_side.setter
    def padding_side(self, side: str) -> None:
        if side not in ("left", "right"):
            raise ConfigError(f"padding_side must be 'left' or 'right', got {side!r}")
        self._padding_side = side

    # ------------------------------------------------------------------ vocabulary
    @property
    def vocab_size(self) -> int:
        """Number of ids, special and added tokens included (the embedding table size)."""
        return self._tk.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    def get_vocab(self) -> dict[str, int]:
        return self._tk.get_vocab(with_added_tokens=True)

    @property
    def backend(self) -> _Backend:
        """The underlying ``tokenizers.Tokenizer`` (do not enable padding/truncation on it)."""
        return self._tk

    def convert_ids_to_tokens(self, ids: int | Iterable[int]) -> str | list[str]:
        if isinstance(ids, (int, np.integer)):
            return self._tk.id_to_token(int(ids))
        return [self._tk.id_to_token(i) for i in _as_list(ids)]

    def convert_tokens_to_ids(self, tokens: str | Iterable[str]) -> int | list[int]:
        def one(t: str) -> int:
            i = self._tk.token_to_id(t)
            if i is None:
                if self.unk_token_id is None:
                    raise ConfigError(f"token {t!r} is not in the vocabulary and there is no unk token")
                return self.unk_token_id
            return i

        if isinstance(tokens, str):
            return one(tokens)
        return [one(t) for t in tokens]

    def special_tokens_mask(self, ids: Iterable[int]) -> list[int]:
        """1 for special tokens (pad, cls, sep, mask, sentinels, ...), 0 otherwise."""
        s = self._special_set
        return [1 if i in s else 0 for i in _as_list(ids)]

    def continuation_mask(self) -> np.ndarray:
        """``(vocab_size,)`` bool: True for tokens that continue a word (for whole-word masking).

        WordPiece: ``##`` prefix; byte-level BPE: tokens not starting with ``Ġ`` (a space);
        unigram: tokens not starting with ``▁``. Special tokens are never continuations.
        """
        if self._cont_mask is None:
            mask = np.zeros(self.vocab_size, dtype=bool)
            for tok, i in self.get_vocab().items():
                if self.kind == "wordpiece":
                    mask[i] = tok.startswith("##")
                elif self.kind == "bpe":
                    mask[i] = not tok.startswith("\u0120")
                else:
                    mask[i] = not tok.startswith("\u2581")
            mask[list(self._special_set)] = False
            for t in self._tk.get_added_tokens_decoder().values():
                if t.special:
                    mask[self._tk.token_to_id(t.content)] = False
            self._cont_mask = mask
        return self._cont_mask.copy()

    @property
    def fingerprint(self) -> str:
        """sha256 of the canonical tokenizer JSON: equal tokenizers have equal fingerprints."""
        if self._fingerprint is None:
            # unigram scores do not survive a save/load round trip to the last bit: compare
            # floats to 12 significant digits
            data = json.loads(self._tk.to_str(), parse_float=lambda x: f"{float(x):.12g}")
            data.pop("padding", None)
            data.pop("truncation", None)
            canon = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
            self._fingerprint = hashlib.sha256(canon.encode("utf-8")).hexdigest()
        return self._fingerprint

    def __repr__(self) -> str:
        specials = ", ".join(f"{r}={t!r}" for r, t in self._special.items() if t)
        return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size}, {specials})"

    # ------------------------------------------------------------------ encoding
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of one text (no special tokens unless asked)."""
        return self._tk.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = False) -> list[list[int]]:
        """Token ids of many texts; the fast path (parallel in Rust)."""
        return [e.ids for e in self._tk.encode_batch(list(texts), add_special_tokens=add_special_tokens)]

    def tokenize(self, text: str, add_special_tokens: bool = False) -> list[str]:
        """Token strings of one text."""
        return self._tk.encode(text, add_special_tokens=add_special_tokens).tokens

    def __call__(
        self,
        text: str | Sequence[str],
        text_pair: str | Sequence[str] | None = None,
        padding: bool | str = False,
        truncation: bool | str = False,
        max_length: int | None = None,
        return_tensors: str | None = None,
        return_offsets_mapping: bool = False,
        add_special_tokens: bool = True,
        return_attention_mask: bool = True,
        return_token_type_ids: bool | None = None,
        return_special_tokens_mask: bool = False,
        pad_to_multiple_of: int | None = None,
    ) -> BatchEncoding:
        """Encode one text (or pair) or a batch, like ``transformers`` tokenizers.

        Args:
            text: a string or a list of strings.
            text_pair: second segments (same shape as ``text``) for sentence pairs.
            padding: ``False``; ``True``/``"longest"`` (to the longest in the batch);
                ``"max_length"`` (to ``max_length``). The side is ``self.padding_side``.
            truncation: ``False``; ``True``/``"longest_first"``, ``"only_first"``,
                ``"only_second"``; truncates to ``max_length`` (special tokens included).
            max_length: length limit; defaults to ``model_max_length`` when needed.
            return_tensors: ``None`` (lists), ``"pt"`` (torch int64) or ``"np"`` (int64).
            return_offsets_mapping: add ``offset_mapping``: ``(start, end)`` character spans,
                relative to each segment, ``(0, 0)`` for special and padding tokens.
            add_special_tokens: add ``[CLS]``/``[SEP]`` (WordPiece) or ``</s>`` (unigram).
            return_attention_mask: add ``attention_mask`` (1 for tokens, 0 for padding).
            return_token_type_ids: add ``token_type_ids``; default: for pairs and WordPiece.
            return_special_tokens_mask: add ``special_tokens_mask``.
            pad_to_multiple_of: round the padded length up to a multiple of this.

        Returns:
            :class:`BatchEncoding`. For a single string the values are flat lists (or ``(1, T)``
            tensors with ``return_tensors``).
        """
        single = isinstance(text, str)
        texts = [text] if single else list(text)
        if text_pair is not None:
            pairs = [text_pair] if isinstance(text_pair, str) else list(text_pair)
            if len(pairs) != len(texts):
                raise ConfigError(f"text_pair has {len(pairs)} items but text has {len(texts)}")
            inputs: list[Any] = list(zip(texts, pairs))
        else:
            inputs = texts
        pad_mode = {False: None, None: None, "do_not_pad": None, True: "longest", "longest": "longest",
                    "max_length": "max_length"}.get(padding, "?")  # type: ignore[arg-type]
        if pad_mode == "?":
            raise ConfigError(f"padding must be False, True, 'longest' or 'max_length', got {padding!r}")
        trunc = {False: None, None: None, "do_not_truncate": None, True: "longest_first",
                 "longest_first": "longest_first", "only_first": "only_first",
                 "only_second": "only_second"}.get(truncation, "?")  # type: ignore[arg-type]
        if trunc == "?":
            raise ConfigError(f"truncation must be a bool or longest_first/only_first/only_second, got {truncation!r}")
        limit = max_length if max_length is not None else self.model_max_length
        if (trunc or pad_mode == "max_length") and limit is None:
            raise ConfigError("truncation/padding to max_length needs max_length (or model_max_length)")
        if pad_mode and self.pad_token_id is None:
            raise ConfigError(
                "this tokenizer has no pad token; set one first, e.g. tok.pad_token = tok.eos_token"
            )
        with self._lock:
            try:
                if trunc:
                    self._tk.enable_truncation(int(limit), strategy=trunc, direction="right")  # type: ignore[arg-type]
                if pad_mode:
                    self._tk.enable_padding(
                        direction=self.padding_side, pad_id=self.pad_token_id, pad_type_id=0,
                        pad_token=self.pad_token, pad_to_multiple_of=pad_to_multiple_of,
                        length=int(limit) if pad_mode == "max_length" else None,  # type: ignore[arg-type]
                    )
                encs = self._tk.encode_batch(inputs, add_special_tokens=add_special_tokens)
            except Exception as e:  # the Rust side raises plain Exceptions for bad settings
                raise ConfigError(f"cannot encode: {e}") from None
            finally:
                self._tk.no_truncation()
                self._tk.no_padding()
        if return_token_type_ids is None:
            return_token_type_ids = text_pair is not None or self.kind == "wordpiece"
        out: dict[str, Any] = {"input_ids": [e.ids for e in encs]}
        if return_token_type_ids:
            out["token_type_ids"] = [e.type_ids for e in encs]
        if return_attention_mask:
            out["attention_mask"] = [e.attention_mask for e in encs]
        if return_special_tokens_mask:
            # the backend's mask marks only template-added tokens; include padding too
            out["special_tokens_mask"] = [
                [1 if (s or not a) else 0 for s, a in zip(e.special_tokens_mask, e.attention_mask)] for e in encs
            ]
        if return_offsets_mapping:
            out["offset_mapping"] = [[tuple(o) for o in e.offsets] for e in encs]
        if return_tensors is not None:
            out = {k: self._to_tensor(k, v, return_tensors) for k, v in out.items()}
        elif single:
            out = {k: v[0] for k, v in out.items()}
        return BatchEncoding(out)

    @staticmethod
    def _to_tensor(key: str, rows: list[list[Any]], kind: str) -> Any:
        if len({len(r) for r in rows}) > 1:
            raise ConfigError(f"cannot make a tensor of {key}: sequences have different lengths; pass padding=True")
        arr = np.asarray(rows, dtype=np.int64)
        if not rows:
            arr = arr.reshape(0, 0)
        if kind == "np":
            return arr
        if kind == "pt":
            import torch

            return torch.from_numpy(arr)
        raise ConfigError(f"return_tensors must be None, 'pt' or 'np', got {kind!r}")

    # ------------------------------------------------------------------ decoding
    def decode(self, ids: Any, skip_special_tokens: bool = False) -> str:
        """Text of a sequence of ids (list, array or 1-D tensor)."""
        return self._tk.decode(_as_list(ids), skip_special_tokens=skip_special_tokens)

    def batch_decode(self, sequences: Any, skip_special_tokens: bool = False) -> list[str]:
        """Texts of many sequences (list of lists, 2-D array or tensor)."""
        if hasattr(sequences, "tolist"):
            sequences = sequences.tolist()
        return self._tk.decode_batch([_as_list(s) for s in sequences], skip_special_tokens=skip_special_tokens)

    # ------------------------------------------------------------------ pickling
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_lock"] = None
        state["_tk"] = self._tk.to_str()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state["_tk"] = _Backend.from_str(state["_tk"])
        state["_lock"] = threading.Lock()
        self.__dict__.update(state)

    # ------------------------------------------------------------------ saving / loading
    def save(self, directory: str | Path, model_type: str | None = None, model_max_length: int | None = None,
             token_type_ids: bool | None = None) -> Path:
        """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json`` into
        ``directory`` (atomically, file by file; other files there are left alone).

        ``tokenizer_config.json`` carries what ``transformers``' ``AutoTokenizer.from_pretrained``
        (default arguments) needs to encode exactly as this tokenizer does: the class
        (``BertTokenizerFast``, ``GPT2TokenizerFast``, ``RobertaTokenizerFast``, ``T5TokenizerFast``,
        or ``TokenizersBackend`` where no named class rebuilds our pipeline), ``model_input_names``
        (with ``token_type_ids`` when the model reads them: without it transformers drops them
        and a pair classifier sees every segment as A), ``model_max_length`` (so pipelines can
        truncate) and the special tokens with their ids.

        Args:
            directory: the folder.
            model_type: the transformers ``model_type`` of the model beside it (``bert``,
                ``roberta``, ``bart``, ...) when known; picks RoBERTa/BART classes where they fit.
            model_max_length: the model's number of positions. Default: read from a
                ``config.json`` in ``directory`` (ours or transformers'), else the tokenizer's own.
            token_type_ids: whether the model reads token type ids. Default: from that
                ``config.json``, else True for WordPiece.

        Returns:
            The directory.
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        beside = _model_facts(d / "config.json")
        model_type = model_type or beside.get("model_type")
        if model_max_length is None:
            model_max_length = beside.get("max_positions")
        if token_type_ids is None:
            token_type_ids = beside.get("token_type_ids")
        cfg = self.hf_tokenizer_config(model_type, model_max_length, token_type_ids)
        smap = {f"{r}_token": t for r, t in self._special.items() if t is not None and r in _HF_ROLES}
        if self.sentinel_tokens:
            smap["additional_special_tokens"] = list(self.sentinel_tokens)
        atomic_write_text(d / "tokenizer.json", self._tk.to_str(pretty=True))
        atomic_write_text(d / "tokenizer_config.json", json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
        atomic_write_text(d / "special_tokens_map.json", json.dumps(smap, indent=2, ensure_ascii=False) + "\n")
        return d

    def save_pretrained(self, save_directory: str | Path, **kwargs: Any) -> Path:
        """Alias of :meth:`save` under the ``transformers`` name (same arguments)."""
        return self.save(save_directory, **kwargs)

    def hf_tokenizer_config(self, model_type: str | None = None, model_max_length: int | None = None,
                            token_type_ids: bool | None = None) -> dict[str, Any]:
        """The ``tokenizer_config.json`` contents :meth:`save` writes (see there)."""
        cls_name, init = _hf_tokenizer_class(self, model_type)
        mml = self.model_max_length
        if model_max_length is not None:
            mml = model_max_length if mml is None else min(int(mml), int(model_max_length))
        if token_type_ids is None:
            token_type_ids = self.kind == "wordpiece"
        cfg: dict[str, Any] = {"tokenizer_class": cls_name}
        cfg["model_input_names"] = ["input_ids", "token_type_ids", "attention_mask"] if token_type_ids \
            else ["input_ids", "attention_mask"]
        for role, tok in self._special.items():
            if role in _HF_ROLES:
                cfg[f"{role}_token"] = tok  # null too: the named classes otherwise fill in their defaults
        if self.sentinel_tokens:
            cfg["additional_special_tokens"] = list(self.sentinel_tokens)
        cfg.update(init)
        # the ids of added tokens: without them transformers appends them in its own order
        cfg["added_tokens_decoder"] = {
            str(i): {"content": t.content, "lstrip": t.lstrip, "normalized": t.normalized, "rstrip": t.rstrip,
                     "single_word": t.single_word, "special": t.special}
            for i, t in sorted(self._tk.get_added_tokens_decoder().items())
        }
        cfg["padding_side"] = self.padding_side
        if mml is not None:
            cfg["model_max_length"] = int(mml)
        cfg["clean_up_tokenization_spaces"] = False
        cfg["transferlab"] = {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "lowercase": self.lowercase,
            "special_tokens": self._special,
            "sentinel_tokens": self.sentinel_tokens,
            "model_max_length": self.model_max_length,
        }
        return cfg

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> "Tokenizer":
        """Load a tokenizer.

        Args:
            path: a folder saved by :meth:`save`; a folder or file with a BERT ``vocab.txt``; a
                ``tokenizer.json`` (or a folder with one, e.g. a ``transformers`` model folder);
                a folder with GPT-2 ``encoder.json`` + ``vocab.bpe`` (or ``vocab.json`` +
                ``merges.txt``); ``"builtin:gpt2"``; ``"builtin:minilm"``.
            **kwargs: ``padding_side``, ``model_max_length``, ``lowercase`` (vocab.txt only) and
                special tokens by role (``pad_token="<|endoftext|>"``).

        Raises:
            DataError: nothing loadable at ``path``.
        """
        s = str(path)
        if s.startswith("builtin:"):
            from ..data.builtin import gpt2_files, minilm_dir

            if s == "builtin:gpt2":
                enc, merges = gpt2_files()
                return cls._from_gpt2_files(enc, merges, **kwargs)
            if s == "builtin:minilm":
                return cls.from_pretrained(minilm_dir() / "tokenizer.json", **kwargs)
            raise DataError(f"unknown built-in tokenizer {s!r}; known: builtin:gpt2, builtin:minilm")
        p = Path(path)
        if not p.exists():
            raise DataError(f"{p}: no such tokenizer file or folder")
        if p.is_file():
            if p.name.endswith(".json") and p.name != "encoder.json":
                return cls._from_tokenizer_json(p, **kwargs)
            if p.suffix == ".txt":
                return cls._from_vocab_txt(p, **kwargs)
            raise DataError(f"{p}: not a tokenizer file (expected tokenizer.json or vocab.txt)")
        if (p / "tokenizer.json").is_file():
            return cls._from_tokenizer_json(p / "tokenizer.json", **kwargs)
        if (p / "vocab.txt").is_file():
            return cls._from_vocab_txt(p / "vocab.txt", **kwargs)
        for enc, merges in (("encoder.json", "vocab.bpe"), ("vocab.json", "merges.txt")):
            if (p / enc).is_file() and (p / merges).is_file():
                return cls._from_gpt2_files(p / enc, p / merges, **kwargs)
        raise DataError(
            f"{p}: no tokenizer found (expected tokenizer.json, vocab.txt, or encoder.json + vocab.bpe)"
        )

    @staticmethod
    def _split_kwargs(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        specials = {r: kwargs.pop(f"{r}_token") for r in SPECIAL_ROLES if f"{r}_token" in kwargs}
        allowed = {"padding_side", "model_max_length", "lowercase"}
        unknown = set(kwargs) - allowed
        if unknown:
            raise ConfigError(f"unknown tokenizer option(s): {', '.join(sorted(unknown))}")
        return kwargs, specials

    @classmethod
    def _from_tokenizer_json(cls, file: Path, **kwargs: Any) -> "Tokenizer":
        opts, overrides = cls._split_kwargs(dict(kwargs))
        try:
            backend = _Backend.from_file(str(file))
        except Exception as e:
            raise DataError(f"{file}: not a valid tokenizer.json ({e})") from None
        model_type = type(backend.model).__name__
        kind = {"WordPiece": "wordpiece", "BPE": "bpe", "Unigram": "unigram"}.get(model_type)
        if kind is None:
            raise DataError(f"{file}: unsupported tokenizer model {model_type!r} (expected WordPiece, BPE or Unigram)")
        cfg = _read_json(file.parent / "tokenizer_config.json")
        ours = cfg.get("transferlab") if isinstance(cfg.get("transferlab"), dict) else None
        if ours:
            kind = ours.get("kind", kind)
            specials = dict(ours.get("special_tokens", {}))
            sentinels = list(ours.get("sentinel_tokens", []))
            lowercase = ours.get("lowercase")
        else:
            specials, sentinels = _guess_specials(backend, kind, cfg, _read_json(file.parent / "special_tokens_map.json"))
            lowercase = cfg.get("do_lower_case")
        specials.update(overrides)
        mml = cfg.get("model_max_length")
        if ours and "model_max_length" in ours:  # ours: the tokenizer's own limit, not the model's
            mml = ours["model_max_length"]
        opts.setdefault("model_max_length", int(mml) if isinstance(mml, (int, float)) and mml < 1e9 else None)
        opts.setdefault("padding_side", cfg.get("padding_side", "right"))
        opts.pop("lowercase", None)
        return cls(backend, kind, specials, sentinels, lowercase=lowercase, **opts)

    @classmethod
    def _from_vocab_txt(cls, file: Path, **kwargs: Any) -> "Tokenizer":
        opts, overrides = cls._split_kwargs(dict(kwargs))
        cfg = _read_json(file.parent / "tokenizer_config.json")
        lowercase = opts.pop("lowercase", None)
        if lowercase is None:
            lowercase = bool(cfg.get("do_lower_case", True))
        try:
            model = models.WordPiece.from_file(str(file), unk_token=_BERT["unk"], max_input_chars_per_word=100)
        except Exception as e:
            raise DataError(f"{file}: not a valid WordPiece vocab.txt ({e})") from None
        backend = _Backend(model)
        specials = {r: t for r, t in _BERT.items() if backend.token_to_id(t) is not None}
        specials.update(overrides)
        _wordpiece_pipeline(backend, lowercase, specials)
        mml = cfg.get("model_max_length")
        opts.setdefault("model_max_length", int(mml) if isinstance(mml, (int, float)) and mml < 1e9 else None)
        return cls(backend, "wordpiece", specials, lowercase=lowercase, **opts)

    @classmethod
    def _from_gpt2_files(cls, encoder: Path, merges: Path, **kwargs: Any) -> "Tokenizer":
        opts, overrides = cls._split_kwargs(dict(kwargs))
        opts.pop("lowercase", None)
        try:
            backend = _Backend(models.BPE.from_file(str(encoder), str(merges)))
        except Exception as e:
            raise DataError(f"{encoder}, {merges}: not a valid GPT-2 vocabulary ({e})") from None
        _bpe_pipeline(backend, lowercase=False)
        specials: dict[str, str | None] = {"bos": _EOT, "eos": _EOT} if backend.token_to_id(_EOT) is not None else {}
        specials.update(overrides)
        opts.setdefault("model_max_length", 1024)
        return cls(backend, "bpe", specials, lowercase=False, **opts)

    # ------------------------------------------------------------------ training
    @classmethod
    def train(
        cls,
        inputs: Any,
        kind: str = "wordpiece",
        vocab_size: int = 8000,
        lowercase: bool | None = None,
        min_frequency: int = 2,
        n_sentinels: int = 100,
        show_progress: bool = False,
        format: str | None = None,
        text_column: str = "text",
        doc_sep: str = "blank",
        model_max_length: int | None = None,
    ) -> "Tokenizer":
        """Train a new tokenizer.

        Args:
            inputs: file/folder paths and ``builtin:`` corpus names (a string or a list), or an
                iterable of raw text strings. A list mixing both is read item by item: strings
                that name an existing path (or ``builtin:...``) are read as corpora.
            kind: ``wordpiece``, ``bpe`` or ``unigram``.
            vocab_size: target size including special (and sentinel) tokens; small corpora may
                yield fewer.
            lowercase: lower-case (and, for WordPiece, strip accents); default True for
                WordPiece, False otherwise.
            min_frequency: minimum pair/word frequency for WordPiece and BPE merges.
            n_sentinels: sentinel tokens ``<extra_id_i>`` for unigram (T5 span corruption).
            show_progress: show the trainer's progress bar.
            format, text_column, doc_sep: how to read files (see ``read_documents``).
            model_max_length: stored default for truncation.

        Returns:
            The trained :class:`Tokenizer`.
        """
        if kind not in KINDS:
            raise ConfigError(f"unknown tokenizer kind {kind!r}; expected one of: {', '.join(KINDS)}")
        if lowercase is None:
            lowercase = _DEFAULT_LOWERCASE[kind]
        texts = _iter_texts(inputs, format, text_column, doc_sep)
        specials: dict[str, str | None]
        sentinels: list[str] = []
        if kind == "wordpiece":
            specials = dict(_BERT)
            backend = _Backend(models.WordPiece(unk_token=_BERT["unk"], max_input_chars_per_word=100))
            _wordpiece_pipeline(backend, lowercase, None)
            texts, seeds = _wordpiece_seed_tokens(inputs, texts, backend, lambda: _iter_texts(inputs, format, text_column, doc_sep))
            trainer = trainers.WordPieceTrainer(
                vocab_size=vocab_size, min_frequency=min_frequency, show_progress=show_progress,
                special_tokens=list(_BERT.values()) + seeds, limit_alphabet=1000, continuing_subword_prefix="##",
            )
        elif kind == "bpe":
            specials = {"bos": _EOT, "eos": _EOT, "pad": "<pad>", "mask": "<mask>"}
            backend = _Backend(models.BPE())
            _bpe_pipeline(backend, lowercase)
            trainer = trainers.BpeTrainer(
                vocab_size=vocab_size, min_frequency=min_frequency, show_progress=show_progress,
                special_tokens=[_EOT, "<pad>", "<mask>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            )
        else:
            specials = {"pad": "<pad>", "eos": "</s>", "unk": "<unk>"}
            if vocab_size <= n_sentinels + 3:
                raise ConfigError(f"vocab_size={vocab_size} leaves no room next to {n_sentinels} sentinels")
            backend = _Backend(models.Unigram())
            _unigram_pipeline(backend, lowercase, None)
            trainer = trainers.UnigramTrainer(
                vocab_size=vocab_size - n_sentinels, show_progress=show_progress,
                special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>", max_piece_length=16,
            )
            sentinels = [f"<extra_id_{i}>" for i in range(n_sentinels)]
        counter = _Counter(texts)
        backend.train_from_iterator(counter, trainer=trainer)
        if counter.n == 0:
            raise DataError("cannot train a tokenizer on an empty corpus")
        if kind == "wordpiece":
            backend = _canonical_wordpiece(backend, lowercase, list(_BERT.values()))
            _wordpiece_pipeline(backend, lowercase, specials)
        elif kind == "unigram":
            backend = _canonical_unigram(backend, lowercase, ["<pad>", "</s>", "<unk>"])
            # T5 puts <extra_id_0> at the top of the vocabulary: add them in reverse order
            backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in reversed(sentinels)])
            _unigram_pipeline(backend, lowercase, specials)
        return cls(backend, kind, specials, sentinels, model_max_length=model_max_length, lowercase=lowercase)


def _wordpiece_seed_tokens(inputs: Any, texts: Iterable[str], backend: Any, again: Any,
                           limit_alphabet: int = 1000) -> tuple[Iterable[str], list[str]]:
    """The corpus's characters and ``##`` continuations, sorted, to register before training.

    Why: the WordPiece trainer gives each ``##x`` piece its id in the order it meets words in a
    hash map (a new order in every process), and merges of equal count are broken by those ids,
    so the same corpus gave a different vocabulary in each process. Registered up front (as the
    trainer's leading tokens), every piece has a fixed id and training is deterministic; the
    canonical renumbering afterwards drops their special status. One extra pass over the corpus
    (a one-shot iterator is kept in memory for it).

    Returns:
        The texts to train on (a fresh iterator) and the sorted seed tokens.
    """
    if isinstance(inputs, (str, Path, list, tuple)):
        first, texts = texts, again()
    else:
        kept = list(texts)
        first, texts = iter(kept), iter(kept)
    import collections

    norm = backend.normalizer
    counts: collections.Counter[str] = collections.Counter()
    for t in first:
        counts.update(norm.normalize_str(t) if norm is not None else t)
    # the trainer's own limit_alphabet: the 1,000 most frequent characters (ties by character)
    kept = sorted((c for c in counts if not c.isspace()), key=lambda c: (-counts[c], c))[:limit_alphabet]
    seeds = sorted(kept)
    return texts, seeds + ["##" + c for c in seeds]
