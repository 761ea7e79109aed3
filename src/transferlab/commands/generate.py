"""``transferlab generate``: sample / decode text from a model folder.

Its settings are the typed :class:`GenerateSettings`: flags generated from its fields, or
``--config FILE.yaml`` and ``key=value`` overrides, the grammar of every command
(:func:`transferlab.cli.add_config_arguments`).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import DType


@dataclass
class GenerateSettings:
    """What ``generate`` reads: the model, the prompts, the decoding settings, the runtime."""

    model: str | None = field(default=None, metadata={"metavar": "DIR"})
    """model folder with its tokenizer (ours, a transformers folder or builtin:NAME)"""
    prompt: list[str] = field(default_factory=list, metadata={"metavar": "TEXT"})
    """a prompt; repeatable"""
    prompt_file: str | None = field(default=None, metadata={"metavar": "FILE"})
    """a UTF-8 text file with one prompt per line (blank lines skipped)"""
    max_new_tokens: int = field(default=50, metadata={"metavar": "N"})
    """tokens to generate"""
    do_sample: bool = False
    """sample instead of greedy decoding"""
    temperature: float = field(default=1.0, metadata={"metavar": "T"})
    """sampling temperature > 0"""
    top_k: int = field(default=50, metadata={"metavar": "K"})
    """sample from the K most likely tokens, 0 = off (as transformers)"""
    top_p: float = field(default=1.0, metadata={"metavar": "P"})
    """nucleus sampling: smallest token set with probability mass >= P, in (0, 1]"""
    num_beams: int = field(default=1, metadata={"metavar": "B"})
    """beam width; 1 = no beam search"""
    length_penalty: float = field(default=1.0, metadata={"metavar": "L"})
    """beam length penalty exponent"""
    repetition_penalty: float = field(default=1.0, metadata={"metavar": "R"})
    """penalise tokens already present, > 1 discourages repeats"""
    stop: list[str] = field(default_factory=list, metadata={"metavar": "STR"})
    """stop a completion once it contains STR (repeatable), e.g. --stop '\\n\\n'"""
    seed: int | None = field(default=None, metadata={"metavar": "S"})
    """seed for reproducible sampling"""
    batch_size: int = field(default=16, metadata={"metavar": "N"})
    """prompts per batch"""
    truncate: bool = False
    """left-truncate prompts that do not fit the context instead of failing"""
    no_cache: bool = False
    """recompute every step without the KV cache (slow; for checks)"""
    no_stream: bool = False
    """do not stream a single prompt token by token"""
    compile: bool = False
    """run each new token through torch.compile: about 30 s to compile per batch size, then up to 2x faster
    tokens at batch 1 (see docs/generation.md)"""
    dtype: DType = DType.FP32
    """weights dtype; bf16 speeds up the matmuls on CPUs with avx512_bf16, auto picks it where the hardware has it"""
    device: str = "auto"
    """auto, cpu, cuda, cuda:N or mps (auto: cuda if available)"""
    perplexity: bool = False
    """also report the model's perplexity on its own generated text (per completion and mean)"""
    json: bool = False
    """print one JSON object per prompt instead of text"""

    def validate(self) -> GenerateSettings:
        """ConfigError unless a model is named."""
        from ..errors import ConfigError

        if not self.model:
            raise ConfigError("generate: give --model DIR (or model: in --config, or model=DIR)")
        return self


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..cli import GRAMMAR_EPILOG, add_config_arguments

    p = subparsers.add_parser(
        "generate", help="generate text from a decoder or encoder-decoder model directory",
        description="Load a model directory (config.json + model.safetensors + the tokenizer saved beside them "
        "by pretrain/finetune) and continue each prompt (decoders) or transform it (encoder-decoders). "
        "Greedy by default; --do-sample samples (temperature, top-k, top-p), --num-beams runs beam search. "
        "A single prompt is streamed token by token. Prompts of different lengths are left-padded and "
        "batched.",
        epilog=GRAMMAR_EPILOG + "\n\nexamples:\n"
        "  transferlab generate --model runs/gpt/model --prompt 'The movie was' --max-new-tokens 40\n"
        "  transferlab generate --model runs/gpt/model --prompt-file prompts.txt --do-sample --top-p 0.9 "
        "--seed 1 --perplexity\n"
        "  transferlab generate --config gen.yaml --prompt 'article text ...' num_beams=4",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(p, GenerateSettings)
    p.set_defaults(func=_generate)


# ---------------------------------------------------------------------------------- helpers
def load_for_inference(model: str, dtype: str | DType, device: str) -> tuple[Any, Any]:
    """The model (weights in ``dtype``, on ``device``) and its tokenizer: the one loader.

    Args:
        model: a model folder or builtin:NAME.
        dtype: ``auto|bf16|fp16|fp32`` (``auto``: bf16 where the hardware has native bf16).
        device: ``auto|cpu|cuda|cuda:N|mps``.

    Returns:
        ``(model, tokenizer)``, the model in eval mode.
    """
    from ..interop.loading import load_pretrained
    from ..runtime import resolve_device, torch_dtype

    dev = resolve_device(device)  # before loading: a bad --device costs nothing
    return load_pretrained(model, device=dev, dtype=torch_dtype(dtype, dev))


def _read_prompts(args: GenerateSettings) -> list[str]:
    from ..errors import ConfigError, DataError

    prompts = list(args.prompt or [])
    if args.prompt_file:
        f = Path(args.prompt_file)
        try:
            text = f.read_text(encoding="utf-8")
        except OSError as e:
            raise DataError(f"{f}: cannot read prompt file ({e.strerror})") from None
        except UnicodeDecodeError as e:
            raise DataError(f"{f}: not UTF-8 text (byte {e.start})") from None
        lines = [ln for ln in text.splitlines() if ln.strip()]
        if not lines:
            raise DataError(f"{f}: no prompts (the file is empty or blank)")
        prompts += lines
    if not prompts:
        raise ConfigError("give at least one --prompt TEXT or --prompt-file FILE")
    return prompts


def _completion_ids(row: list[int], eos: set[int], pad: int) -> list[int]:
    """New token ids up to (excluding) the first eos; trailing pads dropped."""
    out = []
    for t in row:
        if t in eos:
            break
        out.append(t)
    while out and out[-1] == pad:
        out.pop()
    return out


# ---------------------------------------------------------------------------------- generate
def _generate(ns: argparse.Namespace) -> int:
    from ..cli import config_from_args

    args = config_from_args(ns, GenerateSettings, "generate")
    import torch

    from ..config import Family
    from ..errors import ConfigError
    from ..generation import GenerationConfig, TextStreamer, generation_perplexity
    from ..specials import SpecialIds

    prompts = _read_prompts(args)
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    settings = dict(
        max_new_tokens=args.max_new_tokens, do_sample=args.do_sample, temperature=args.temperature,
        top_k=args.top_k, top_p=args.top_p, num_beams=args.num_beams, length_penalty=args.length_penalty,
        repetition_penalty=args.repetition_penalty, seed=args.seed, use_cache=not args.no_cache,
        truncation=args.truncate, compile=args.compile,
        # '\\n' typed in a shell arrives as backslash + n: treat it as a newline
        stop_strings=[s.replace("\\n", "\n").replace("\\t", "\t") for s in args.stop] or None,
    )
    GenerationConfig().replace(**settings)  # bad settings fail before anything is loaded or printed
    model, tok = load_for_inference(args.model, args.dtype, args.device)
    seq2seq = model.config.family == Family.ENCODER_DECODER
    ids = SpecialIds.resolve(model.config, tok)  # the one rule (specials.py)
    eos_id, pad_id = ids.eos, ids.pad
    if tok.pad_token_id is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token  # GPT-2 convention: pad with eos (masked out anyway)
    tok.padding_side = "right" if seq2seq else "left"
    settings.update(eos_token_id=eos_id, pad_token_id=pad_id)
    stream = len(prompts) == 1 and args.num_beams == 1 and not args.no_stream and not args.json
    eos_set = {eos_id} if eos_id is not None else set()
    ppls: list[float] = []
    for start in range(0, len(prompts), args.batch_size):
        batch = prompts[start: start + args.batch_size]
        enc = tok(batch, padding=True, return_tensors="pt", add_special_tokens=seq2seq)
        ids, mask = enc["input_ids"], enc["attention_mask"]
        if ids.shape[1] == 0:  # only empty prompts: start from the bos/eos token
            first = tok.bos_token_id if tok.bos_token_id is not None else eos_id
            if first is None:
                raise ConfigError("empty prompt and the tokenizer has no bos/eos token to start from")
            ids, mask = torch.full((len(batch), 1), first), torch.ones(len(batch), 1, dtype=torch.long)
        elif bool((mask.sum(1) == 0).any()):
            raise ConfigError("empty prompt in a batch of non-empty ones; give it some text or run it alone")
        streamer = None
        if stream:  # decoders echo the (decoded) prompt first; seq2seq skips the decoder start token
            streamer = TextStreamer(tok, skip_prompt=seq2seq)
        out = model.generate(ids.to(model.device), mask.to(model.device), streamer=streamer, tokenizer=tok,
                             **settings)
        T = 1 if seq2seq else ids.shape[1]
        ppl = None
        if args.perplexity:
            ppl = generation_perplexity(model, ids.to(model.device), out, mask.to(model.device),
                                        eos_token_id=eos_id).tolist()
        for i, row in enumerate(out.tolist()):
            completion = tok.decode(_completion_ids(row[T:], eos_set, pad_id), skip_special_tokens=True)
            p = ppl[i] if ppl is not None else None
            if p is not None and p == p:
                ppls.append(p)
            if args.json:
                rec = {"prompt": batch[i], "completion": completion}
                if p is not None:
                    rec["perplexity"] = None if p != p else round(p, 4)
                print(json.dumps(rec, ensure_ascii=False))
            elif stream:
                if p is not None:
                    print(f"[perplexity of the generated text: {p:.2f}]")
            else:
                print(f"=== {start + i + 1} ===")
                print(completion if seq2seq else batch[i] + completion)
                if p is not None:
                    print(f"[perplexity: {p:.2f}]")
    if args.perplexity and len(prompts) > 1 and not args.json and ppls:
        print(f"mean perplexity of the generated text over {len(ppls)} completions: {sum(ppls) / len(ppls):.2f}")
    return 0
