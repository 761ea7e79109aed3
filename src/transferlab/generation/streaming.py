"""Streaming generated text as it arrives (``generate(..., streamer=TextStreamer(tok))``)."""

from __future__ import annotations

import sys
from typing import Any, TextIO

import torch

from ..errors import ConfigError


class TextStreamer:
    """Print text as tokens arrive (like ``transformers.TextStreamer``); batch size 1.

    ``generate`` calls ``put(prompt_ids)`` once, then ``put(new_token_ids)`` per step, then
    ``end()``. The text printed so far is always ``tokenizer.decode(all tokens)``'s prefix: a
    trailing incomplete UTF-8 character (byte-level BPE splits them) is held back until complete.

    Args:
        tokenizer: anything with ``decode(ids, skip_special_tokens=...)``.
        skip_prompt: do not print the prompt.
        skip_special_tokens: passed to ``decode``.
        file: where to write (default stdout); flushed after each piece.
    """

    def __init__(self, tokenizer: Any, skip_prompt: bool = True, skip_special_tokens: bool = True,
                 file: TextIO | None = None) -> None:
        self.tokenizer, self.skip_prompt, self.skip_special = tokenizer, skip_prompt, skip_special_tokens
        self.file = file
        self._ids: list[int] = []
        self._printed = ""
        self._first = True

    def put(self, value: torch.Tensor) -> None:
        if value.dim() > 1 and value.shape[0] > 1:
            raise ConfigError("TextStreamer streams one sequence; got a batch of "
                              f"{value.shape[0]} (generate one prompt at a time to stream)")
        if self._first:
            self._first = False
            if self.skip_prompt:
                return
        self._ids.extend(int(t) for t in value.reshape(-1).tolist())
        self._emit(final=False)

    def end(self) -> None:
        self._emit(final=True)
        self._write("\n")

    def _emit(self, final: bool) -> None:
        text = self.tokenizer.decode(self._ids, skip_special_tokens=self.skip_special)
        if not final:
            text = text.rstrip("\ufffd")  # incomplete multi-byte character: wait for the rest
        if text.startswith(self._printed) and len(text) > len(self._printed):
            self._write(text[len(self._printed):])
            self._printed = text

    def _write(self, s: str) -> None:
        f = self.file or sys.stdout
        f.write(s)
        f.flush()
