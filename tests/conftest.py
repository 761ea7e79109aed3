import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

torch.set_num_threads(1)

# Shared fixtures over the plain builders of tests/tiny.py (importable: pytest puts this folder on
# sys.path). Module scope, as the copies they replace had: each test module gets its own. tiny is
# imported inside them so that collecting a test module imports only what it imports itself.
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="module")
def wp_data(tmp_path_factory) -> Path:
    """Shards (with a validation split) prepared with a tiny WordPiece tokenizer trained in-process."""
    from tiny import prepared_data

    return prepared_data(tmp_path_factory.mktemp("wp-data"))


@pytest.fixture(scope="module")
def finetune_env(tmp_path_factory) -> dict[str, Path]:
    """One tiny model per family and classification / tagging / seq2seq task files (tiny.finetune_env)."""
    from tiny import finetune_env

    return finetune_env(tmp_path_factory.mktemp("ftscale"))
