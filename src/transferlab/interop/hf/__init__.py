"""Conversion to and from Hugging Face ``transformers`` checkpoints, by explicit key-map tables.

Supported layouts (``model_type`` in a transformers ``config.json``) and the heads they carry:

============  ===================================  ==========================================
model_type    transformers class                   transferlab heads
============  ===================================  ==========================================
bert          BertModel / BertForMaskedLM /         {} / {"lm"} / {"lm", "nsp"} /
              BertForPreTraining /                  {"classification"} /
              BertForSequenceClassification /       {"token_classification"} / {"span"}
              BertForTokenClassification /
              BertForQuestionAnswering
roberta       RobertaModel / RobertaForMaskedLM /   {} / {"lm"} / {"token_classification"} /
              RobertaForTokenClassification /       {"span"}
              RobertaForQuestionAnswering
gpt2          GPT2Model / GPT2LMHeadModel /         {} / {"lm"} / {"token_classification"}
              GPT2ForTokenClassification
bart          BartModel /                           {} / {"lm"}
              BartForConditionalGeneration
t5            T5Model / T5ForConditionalGeneration  {} / {"lm"}
============  ===================================  ==========================================


LLaMA/Mistral/Qwen2 (:mod:`.llama`), RoFormer/ELECTRA/DistilBERT (:mod:`.encoders`) add more.
One module per architecture family holds its key map, config translation and transformers
classes: :mod:`.bert` (BERT, RoBERTa), :mod:`.gpt2`, :mod:`.seq2seq` (BART, T5), :mod:`.llama`,
:mod:`.encoders`; the row format and the block-row generator are in :mod:`.table`, reading
safetensors in :mod:`.weights`, config translation and the layout registry in :mod:`.config`,
whole-model import/export in :mod:`.convert`. Every public name is importable from here.
"""

from __future__ import annotations

from ..tokenizer_files import HF_TOKENIZER_FILES
from .bert import BERT_ROWS, ROBERTA_ROWS
from .config import LAYOUTS, config_from_hf, layout_for
from .convert import export_hf, export_target, from_hf, state_from_hf, to_hf_state
from .encoders import DISTILBERT_ROWS, ELECTRA_ROWS, ROFORMER_ROWS, RotaryInterleave, roformer_table
from .gpt2 import GPT2_ROWS
from .llama import LLAMA_ROWS
from .seq2seq import BART_ROWS, t5_rows
from .table import CAT, CONV1D, COPY, ROW, Layout, Op, Row, block_rows, mlm_rows
from .weights import read_source, read_weights

__all__ = ["from_hf", "export_hf", "to_hf_state", "state_from_hf", "config_from_hf", "layout_for", "export_target",
           "LAYOUTS", "Layout", "Op", "Row", "COPY", "CAT", "CONV1D", "ROW", "block_rows", "mlm_rows",
           "read_weights", "read_source", "HF_TOKENIZER_FILES", "BERT_ROWS", "ROBERTA_ROWS", "GPT2_ROWS",
           "BART_ROWS", "t5_rows", "LLAMA_ROWS", "ROFORMER_ROWS", "ELECTRA_ROWS", "DISTILBERT_ROWS",
           "RotaryInterleave", "roformer_table"]
