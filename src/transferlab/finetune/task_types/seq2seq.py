"""Text to text with the LM head, on encoder-decoders and decoder-only models (ROUGE).

Encoder-decoders: the source goes to the encoder, the target is teacher-forced. Decoder-only:
one sequence ``source + prompt_suffix + target + eos`` with the loss on the completion only.
The LM loss projects only the scored positions onto the vocabulary (sparse prediction): for
prompt -> completion that skips the whole prompt.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any


from ...config import ModelConfig
from ...errors import ConfigError, DataError
from ...models.backbone import family_info
from ...objectives.losses import lm_cross_entropy
from ..inputs import IGNORE, decoder_start_id, pad_to, sorted_batches
from .base import TaskType, register_task_type, row_text

if TYPE_CHECKING:  # annotations only: finetune.config validates task types through this package
    from ..config import TaskSpec


class Seq2Seq(TaskType):
    """Text to text with the LM head. Encoder-decoders: the source goes to the encoder, the target
    is teacher-forced (decoder input = [start] + target[:-1]). Decoder-only: one sequence
    ``source + prompt_suffix + target + eos``; labels are -100 on the prompt so only the
    completion is scored. Evaluation generates (greedy or beam) and returns the text."""

    name = "seq2seq"
    head = "lm"
    primary_metric = "rougeL"
    default_columns = ("source", None, "target")
    input_fields = ("source",)
    label_fields = ("target",)
    baselines = ("lead",)  # the source's first words

    @classmethod
    def matches_fields(cls, fields):
        return {"source", "target"} <= fields

    @classmethod
    def convert(cls, row: dict[str, Any], cols: dict[str, str | None], where: str) -> dict[str, Any]:
        ex = {"source": row_text(row, cols["text"], where, "source"), "_where": where}
        if cols["label"] is not None:
            ex["target"] = row_text(row, cols["label"], where, "target")
        return ex

    @classmethod
    def tokenizer_texts(cls, ex):
        return [ex["source"], ex["target"]]

    @classmethod
    def feature_texts(cls, ex):
        return ex["source"], None

    @classmethod
    def from_text(cls, text, where):
        return {"source": text}

    @classmethod
    def metrics(cls, predictions, references, labels):
        from ...evaluation.metrics import rouge_metrics

        return rouge_metrics(predictions, references)

    def __init__(self, spec: TaskSpec, tok: Any, cfg: ModelConfig):
        super().__init__(spec, tok, cfg)
        self.max_target = spec.max_target_length
        self.suffix_ids = tok.encode(spec.prompt_suffix) if spec.prompt_suffix and self.decoder_only else []
        if self.decoder_only:
            if self.max_length <= self.max_target + len(self.suffix_ids) + 8:
                raise ConfigError(f"max_length={self.max_length} leaves no room for the prompt next to "
                                  f"max_target_length={self.max_target}; raise --max-length or lower --max-target-length")

    @classmethod
    def check_model(cls, cfg):
        if not family_info(cfg.family).backbone.can_generate:
            raise ConfigError("seq2seq needs a decoder or encoder-decoder model; this model is an encoder "
                              "(use a gpt-*, bart-* or t5-* model)")

    def setup_model(self, model, fresh):
        # the LM head is the pre-trained one (tied to the embeddings): never re-initialise it
        for name in list(model.heads):
            if name != "lm":
                model.remove_head(name)
        if "lm" not in model.heads:
            model.add_head("lm")

    def _target_ids(self, texts: list[str]) -> list[list[int]]:
        lead = " " if self.tok.kind == "bpe" else ""  # byte-level BPE: a word after a space
        ids = self.tok.encode_batch([lead + t.strip() for t in texts])
        end = [self.builder.end_id] if self.builder.end_id is not None else []
        return [x[: self.max_target - len(end)] + end for x in ids]

    def _prompt_ids(self, sources: list[str]) -> list[list[int]]:
        src = self.tok.encode_batch(sources)
        if self.decoder_only:
            keep = self.max_length - self.max_target - len(self.suffix_ids)
            return [s[:keep] + self.suffix_ids for s in src]
        return [self.builder.single(s, self.max_length)[0] for s in src]

    def encode(self, examples, train):
        prompts = self._prompt_ids([e["source"] for e in examples])
        has_t = all("target" in e for e in examples)
        targets = self._target_ids([e["target"] for e in examples]) if has_t else None
        if train and not has_t:
            raise DataError("seq2seq training examples need a target")
        feats = []
        for k, p in enumerate(prompts):
            f: dict[str, Any] = {"input_ids": p, "prompt": p, "example": k}
            if targets is not None:
                if self.decoder_only:
                    f["input_ids"] = p + targets[k]
                    f["labels"] = [IGNORE] * len(p) + targets[k]
                else:
                    f["labels"] = targets[k]
            feats.append(f)
        return feats

    def collate(self, feats):
        batch = super().collate(feats)
        if "labels" in feats[0]:
            batch["labels"] = pad_to([f["labels"] for f in feats], IGNORE)
        return batch

    def n_tokens(self, batch):
        n = int(batch["attention_mask"].sum())
        if self.encoder_decoder and "labels" in batch:
            n += int((batch["labels"] != IGNORE).sum())
        return n

    def batch_flops(self, batch):
        estimate_flops = family_info(self.cfg.family).backbone.estimate_flops  # the family's own count
        lengths = batch["attention_mask"].sum(1).tolist()
        targets = (batch["labels"] != IGNORE).sum(1).tolist()
        if self.encoder_decoder:
            return sum(estimate_flops(self.cfg, n, "train", decoder_len=max(t, 1), n_predicted=t)
                       for n, t in zip(lengths, targets))
        return sum(estimate_flops(self.cfg, n, "train", n_predicted=t) for n, t in zip(lengths, targets))

    def loss_count(self, batch):
        labels = batch["labels"]
        tgt = labels if self.encoder_decoder else labels[:, 1:]  # as in loss_sum
        return int((tgt != IGNORE).sum())

    def loss_sum(self, model, batch):
        labels = batch["labels"]
        if self.encoder_decoder:
            from ...models.families import shift_tokens_right

            dec_in = shift_tokens_right(labels, self.builder.pad_id, decoder_start_id(self.cfg, self.tok))
            out = model.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                 decoder_input_ids=dec_in, decoder_attention_mask=(labels != IGNORE).long())
            h, tgt = out.last_hidden_state, labels  # (B, Tt, C), (B, Tt)
        else:
            out = model.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            h, tgt = out.last_hidden_state[:, :-1], labels[:, 1:]  # state t predicts token t+1
        sel = tgt != IGNORE
        # sparse prediction: only scored positions reach the (large) vocabulary projection
        logits = model.heads["lm"](h[sel])  # (N, V)
        return lm_cross_entropy(logits, tgt[sel], reduction="sum")  # the one LM loss (objectives/losses.py)

    def predict(self, model, examples, feats, batch_size, ctx, progress=None):
        device = next(model.parameters()).device
        out: list[Any] = [None] * len(feats)
        kw: dict[str, Any] = {"max_new_tokens": self.max_target, "num_beams": self.spec.num_beams,
                              "pad_token_id": self.builder.pad_id}
        if self.builder.end_id is not None:
            kw["eos_token_id"] = self.builder.end_id
        if self.encoder_decoder:
            kw["decoder_start_token_id"] = decoder_start_id(self.cfg, self.tok)
        left = self.decoder_only  # decoder prompts are left-padded for generation
        for idx in sorted_batches([len(f["prompt"]) for f in feats], batch_size):
            rows = [feats[i]["prompt"] for i in idx]
            ids = pad_to(rows, self.builder.pad_id, left=left).to(device)
            mask = pad_to([[1] * len(r) for r in rows], 0, left=left).to(device)
            with ctx():
                gen = model.generate(ids, attention_mask=mask, **kw)
            new = gen[:, ids.shape[1]:] if left else gen[:, 1:]
            texts = self.tok.batch_decode(new.cpu().tolist(), skip_special_tokens=True)
            for j, i in enumerate(idx):
                out[i] = texts[j].strip()
            if progress is not None:
                progress.update(len(idx))
        return out

    @classmethod
    def reference(cls, ex):
        return ex["target"]


register_task_type(Seq2Seq)
