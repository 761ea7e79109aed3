"""Generation with a KV cache: greedy, sampling (temperature, top-k, top-p) and beam search.

``generate(model, input_ids, attention_mask=None, **settings)`` (also ``model.generate(...)``)
follows ``transformers``' ``generate``:

* decoders return the prompt followed by the new tokens, ``(B, T_prompt + n_new)``;
  encoder-decoders return ``decoder_start_token_id`` followed by the new tokens, ``(B, 1 + n_new)``;
* batched prompts of different lengths are **left**-padded; position ids are
  ``cumsum(attention_mask) - 1`` so every prompt starts at position 0 whatever its padding;
* a sequence that produced ``eos_token_id`` (or a stop string) is finished: later columns hold
  ``pad_token_id``; the loop ends when every sequence is finished or after ``max_new_tokens``;
* beam search is a port of ``transformers``' vectorised beam search (length penalty, early stopping
  ``True``/``False``/``"never"``) and returns identical token ids for the same weights;
* ``transformers``' own arguments mean what they mean there: ``max_length``/``min_length`` count
  the prompt (decoders) or the decoder start token (encoder-decoders), ``no_repeat_ngram_size``,
  ``bad_words_ids``, a ``transformers.GenerationConfig`` as ``generation_config=``, and a saved
  ``generation_config.json`` (``model.generation_config``) under the caller's settings; an eos
  the vocabulary cannot hold never ends a sequence (it runs to the length limit).

Decoding asks the model's :class:`~transferlab.models.backbone.Backbone` (any family that can
generate; see :mod:`.search`). Speed against ``transformers``' ``generate`` is measured in
BENCHMARKS.md (generation section). Scores are always processed in float32.

Differences from ``transformers`` (documented, deliberate): the model is put in eval mode for the
call (and restored after); finished beams are padded with ``pad_token_id`` (``transformers``
uses ``eos`` when the pad id is 0); prompts longer than the position table raise
:class:`~transferlab.errors.ConfigError` unless ``truncation=True`` (left truncation).

Files by job: :mod:`.config` (settings and ``generation_config.json``), :mod:`.processors`
(logits processors, stop strings), :mod:`.search` (``generate``: prefill, greedy/sampling, beam
search), :mod:`.streaming` (``TextStreamer``), :mod:`.scoring` (``token_logprobs``,
``generation_perplexity``).
"""

from __future__ import annotations

from .config import GENERATION_CONFIG_NAME, GenerationConfig, load_generation_config, save_generation_config
from .processors import top_k_filter, top_p_filter
from .scoring import generation_perplexity, token_logprobs
from .search import GenerateOutput, generate
from .streaming import TextStreamer

__all__ = [
    "GENERATION_CONFIG_NAME",
    "GenerationConfig",
    "GenerateOutput",
    "TextStreamer",
    "generate",
    "generation_perplexity",
    "load_generation_config",
    "save_generation_config",
    "token_logprobs",
    "top_k_filter",
    "top_p_filter",
]
