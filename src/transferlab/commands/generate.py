"""``transferlab generate`` (sample / decode text from a model directory) and ``transferlab icl``
(zero/one/few-shot classification accuracy of a decoder)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..runtime import DTYPES


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "generate", help="generate text from a decoder or encoder-decoder model directory",
        description="Load a model directory (config.json + model.safetensors + the tokenizer saved beside them "
        "by pretrain/finetune) and continue each prompt (decoders) or transform it (encoder-decoders). "
        "Greedy by default; --do-sample samples (temperature, top-k, top-p), --num-beams runs beam search. "
        "A single prompt is streamed token by token. Prompts of different lengths are left-padded and "
        "batched.",
        epilog="examples:\n"
        "  transferlab generate --model runs/gpt/model --prompt 'The movie was' --max-new-tokens 40\n"
        "  transferlab generate --model runs/gpt/model --prompt-file prompts.txt --do-sample --top-p 0.9 "
        "--seed 1 --perplexity\n"
        "  transferlab generate --model runs/bart/model --prompt 'article text ...' --num-beams 4",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, metavar="DIR", help="model directory with its tokenizer")
    p.add_argument("--prompt", action="append", default=None, metavar="TEXT", help="a prompt; repeatable")
    p.add_argument("--prompt-file", metavar="FILE", help="a UTF-8 text file with one prompt per line (blank lines skipped)")
    p.add_argument("--max-new-tokens", type=int, default=50, metavar="N", help="tokens to generate (default: %(default)s)")
    p.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0, metavar="T", help="sampling temperature > 0 (default: %(default)s)")
    p.add_argument("--top-k", type=int, default=50, metavar="K",
                   help="sample from the K most likely tokens, 0 = off (default: %(default)s, as transformers)")
    p.add_argument("--top-p", type=float, default=1.0, metavar="P",
                   help="nucleus sampling: smallest token set with probability mass >= P, in (0, 1] (default: %(default)s)")
    p.add_argument("--num-beams", type=int, default=1, metavar="B", help="beam width; 1 = no beam search (default: %(default)s)")
    p.add_argument("--length-penalty", type=float, default=1.0, metavar="L", help="beam length penalty exponent (default: %(default)s)")
    p.add_argument("--repetition-penalty", type=float, default=1.0, metavar="R",
                   help="penalise tokens already present, > 1 discourages repeats (default: %(default)s)")
    p.add_argument("--stop", action="append", default=None, metavar="STR",
                   help="stop a completion once it contains STR (repeatable), e.g. --stop '\\n\\n'")
    p.add_argument("--seed", type=int, default=None, metavar="S", help="seed for reproducible sampling")
    p.add_argument("--batch-size", type=int, default=16, metavar="N", help="prompts per batch (default: %(default)s)")
    p.add_argument("--truncate", action="store_true",
                   help="left-truncate prompts that do not fit the context instead of failing")
    p.add_argument("--no-cache", action="store_true", help="recompute every step without the KV cache (slow; for checks)")
    p.add_argument("--no-stream", action="store_true", help="do not stream a single prompt token by token")
    p.add_argument("--compile", action="store_true",
                   help="run each new token through torch.compile: about 30 s to compile per batch size, "
                        "then up to 2x faster tokens at batch 1 (see docs/generation.md)")
    p.add_argument("--dtype", choices=DTYPES, default="fp32",
                   help="weights dtype; bf16 speeds up the matmuls on CPUs with avx512_bf16, auto picks it where "
                   "the hardware has it (default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: %(default)s: cuda if available)")
    p.add_argument("--perplexity", action="store_true",
                   help="also report the model's perplexity on its own generated text (per completion and mean)")
    p.add_argument("--json", action="store_true", help="print one JSON object per prompt instead of text")
    p.set_defaults(func=_generate)

    q = subparsers.add_parser(
        "icl", help="zero/one/few-shot accuracy of a decoder on a classification task (no training)",
        description="In-context learning: for each k in --shots, prompt the model with a task description, k "
        "demonstrations drawn with --seed from the train split and the test text, then predict the label "
        "whose verbalisation (e.g. ' positive') has the highest sum of token log-probabilities. Prints "
        "accuracy per k next to the majority-class rate; --output writes JSON. Prompts longer than the "
        "context lose their oldest tokens (reported as 'truncated'). See docs/generation.md.",
        epilog="example:\n  transferlab icl --model runs/gpt/model --task imdb --shots 0,1,4,8 --n-test 200 "
        "--max-text-words 40 --output runs/gpt/icl-imdb.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    q.add_argument("--model", required=True, metavar="DIR", help="decoder model directory with its tokenizer")
    q.add_argument("--task", default="imdb", help="classification task: imdb, rotten-tomatoes, bbc-topic (default: %(default)s)")
    q.add_argument("--shots", default="0,1,4,8", help="comma-separated numbers of demonstrations (default: %(default)s)")
    q.add_argument("--seed", type=int, default=0, help="seed for the test sample and demonstrations (default: %(default)s)")
    q.add_argument("--n-test", type=int, default=200, metavar="N", help="test examples (default: %(default)s)")
    q.add_argument("--split", choices=("test", "validation"), default="test", help="evaluation split (default: %(default)s)")
    q.add_argument("--max-length", type=int, default=None, metavar="N",
                   help="context in tokens (default: the pre-training window from <run>/config.json if present, "
                   "else the model's max_positions)")
    q.add_argument("--max-text-words", type=int, default=None, metavar="N",
                   help="clip every review/article to its first N words so more demonstrations fit")
    q.add_argument("--batch-size", type=int, default=8, metavar="N",
                   help="(prompt, label) pairs per forward pass (default: %(default)s)")
    q.add_argument("--dtype", choices=DTYPES, default="fp32", help="weights dtype (default: %(default)s)")
    q.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: %(default)s: cuda if available)")
    q.add_argument("--output", metavar="FILE", help="write the results as JSON (atomically)")
    q.add_argument("--force", action="store_true", help="overwrite --output even if it is not an earlier icl result")
    q.add_argument("--json", action="store_true", help="print the JSON instead of the table")
    q.add_argument("--no-progress", action="store_true", help="hide progress bars")
    q.set_defaults(func=_icl)


# ---------------------------------------------------------------------------------- helpers
def _load(args: argparse.Namespace) -> tuple[Any, Any]:
    """The model (weights in ``--dtype``, on ``--device``) and its tokenizer: the one loader."""
    from ..interop.loading import load_pretrained
    from ..runtime import resolve_device, torch_dtype

    dev = resolve_device(args.device)  # before loading: a bad --device costs nothing
    return load_pretrained(args.model, device=dev, dtype=torch_dtype(args.dtype, dev))


def _read_prompts(args: argparse.Namespace) -> list[str]:
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
def _generate(args: argparse.Namespace) -> int:
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
        stop_strings=[s.replace("\\n", "\n").replace("\\t", "\t") for s in (args.stop or [])] or None,
    )
    GenerationConfig().replace(**settings)  # bad settings fail before anything is loaded or printed
    model, tok = _load(args)
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


# ---------------------------------------------------------------------------------- icl
def _icl(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..evaluation.icl import evaluate_icl, trained_context
    from ..outputs import Output, is_json_with
    from ..utils import atomic_write_text

    try:
        shots = [int(s) for s in args.shots.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--shots: expected comma-separated integers like 0,1,4,8, got {args.shots!r}") from None
    out = (Output(args.output, file=True, owned=is_json_with("model", "task"), force=args.force, flag="--output",
                  inputs=[args.model]) if args.output else None)
    if out is not None:
        out.check()  # before the evaluation, not after
    model, tok = _load(args)
    max_length = args.max_length
    if max_length is None:
        window = trained_context(args.model)
        if window is not None and window < model.config.max_positions:
            max_length = window
            if not args.json:
                print(f"note: context limited to the pre-training window of {window} tokens "
                      "(<run>/config.json train.seq_len); override with --max-length", file=sys.stderr)
    res = evaluate_icl(model, tok, args.task, shots=shots, n_test=args.n_test, seed=args.seed, split=args.split,
                       max_length=max_length, max_text_words=args.max_text_words, batch_size=args.batch_size,
                       progress=not args.no_progress)
    data = res.to_dict()
    data["model"] = str(args.model)
    if out is not None:
        with out:
            atomic_write_text(Path(args.output), json.dumps(data, indent=2) + "\n")
    print(json.dumps(data, indent=2) if args.json else res.table())
    if args.output and not args.json:
        print(f"-> {args.output}")
    return 0
