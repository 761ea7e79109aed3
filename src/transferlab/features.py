"""Frozen features moved to :mod:`transferlab.finetune.features` (extraction, the scalar mix,
:class:`~transferlab.finetune.features.FeaturesConfig`) and :mod:`transferlab.finetune.probes`
(probes, neighbours); these names stay importable from here."""

from __future__ import annotations

from .finetune.features import (  # noqa: F401
    PLAY_EXAMPLES,
    POOLINGS,
    Features,
    FeaturesConfig,
    ScalarMix,
    extract_features,
    features_config,
    hidden_states,
    load_model_and_tokenizer,
    save_features,
)
from .finetune.probes import (  # noqa: F401
    NeighbourReport,
    ProbeResult,
    find_occurrences,
    fit_logreg,
    neighbours,
    probe,
    sample_sentences,
    static_neighbours,
    train_scalar_mix,
    word_vectors,
)
