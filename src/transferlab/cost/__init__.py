"""The price tag of every run: parameters, FLOPs, MFU, energy, CO2e and dollars.

* :func:`estimate_flops` — analytic matmul FLOPs of one sequence for training (forward +
  backward), a forward pass (prefill) or one KV-cached decode step, as the model's family counts
  them (:meth:`~transferlab.models.backbone.Backbone.estimate_flops`; the transformer families:
  :mod:`transferlab.models.flops`, checked against ``FlopCounterMode`` in the tests).
* :func:`device_peak_flops` (:mod:`.peaks`) — the device's dense peak: a table of accelerator
  datasheet figures, or on a CPU (and unknown accelerators) a short matmul benchmark cached per
  machine.
* :class:`CostTracker` (:mod:`.tracker`) — wraps a run: wall time, tokens/s, model FLOPs
  utilisation (MFU), energy and CO2e through codecarbon (offline) with an honest "estimate" label
  when no power counter is readable, and a price from an hourly device price. ``stop()`` writes
  ``report.json``.
* :func:`format_report` (:mod:`.report`) — the few aligned lines printed at the end of a run.

The method, its references and the defaults are documented in ``docs/cost.md``.
"""

from __future__ import annotations

from typing import Any

from . import peaks, report, tracker  # noqa: F401 (tests patch names where they live)
from .peaks import GPU_PEAKS_TFLOPS, _benchmark_matmul, cpu_model_name, device_peak_flops  # noqa: F401 (benchmarks)
from .report import add_cost_arguments, cost_config_from_args, format_report
from .tracker import (
    CPU_PRICE_PER_CORE_HOUR,
    CPU_WATTS_PER_CORE,
    DEFAULT_GPU_PRICE_PER_HOUR,
    DEFAULT_GPU_TDP_WATTS,
    GPU_PRICE_PER_HOUR,
    GPU_TDP_WATTS,
    WORLD_GRID_INTENSITY,
    CostConfig,
    CostTracker,
    count_parameters,
    grid_intensity_for,
)

def estimate_flops(
    cfg: Any,
    seq_len: int,
    mode: str = "train",
    decoder_len: int | None = None,
    n_predicted: float | None = None,
) -> float:
    """Analytic matmul FLOPs of ONE sequence (multiply by the batch size for a batch), as the
    model's family counts them (:meth:`~transferlab.models.backbone.Backbone.estimate_flops`;
    the transformer families: :func:`transferlab.models.flops.transformer_flops`).

    Args:
        cfg: a :class:`~transferlab.config.ModelConfig` (or a model with ``.config``).
        seq_len: tokens in the sequence (encoder tokens for encoder-decoders). In ``decode``
            mode: keys in the cache including the new token (decoders), or the encoder length
            (encoder-decoders).
        mode: ``train`` (forward + backward), ``forward`` (evaluation / generation prefill) or
            ``decode`` (one new token with a KV cache).
        decoder_len: decoder tokens of an encoder-decoder (default ``seq_len``; in ``decode``
            mode the decoder keys in the cache including the new token, default 1).
        n_predicted: rows that reach the vocabulary projection (sparse MLM: the masked positions
            of this sequence, may be fractional as a batch average). Default: every position.

    Returns:
        FLOPs as a float.
    """
    from ..models.flops import family_flops

    return family_flops(getattr(cfg, "config", cfg), seq_len, mode, decoder_len, n_predicted)


def generation_flops(cfg: Any, prompt_len: int, new_tokens: int, batch_size: int = 1) -> float:
    """FLOPs of KV-cached generation: one prefill, then ``new_tokens - 1`` decode steps.

    The prefill runs the prompt (encoder-decoders: the encoder over the prompt and the decoder
    over its start token) and yields the first new token; each later token is one decode step
    whose attention reads the growing cache. The LM head is counted on every prefill position
    (as the model computes it) and once per decode step.

    Args:
        cfg: model config (or model).
        prompt_len: prompt tokens (encoder input length for encoder-decoders).
        new_tokens: tokens generated.
        batch_size: sequences generated in parallel.

    Returns:
        Total FLOPs.
    """
    cfg = getattr(cfg, "config", cfg)
    if new_tokens <= 0:
        return 0.0
    from ..models.backbone import family_info

    if family_info(cfg.family).backbone.is_encoder_decoder:
        total = estimate_flops(cfg, prompt_len, "forward", decoder_len=1)
        total += sum(estimate_flops(cfg, prompt_len, "decode", decoder_len=i) for i in range(2, new_tokens + 1))
    else:
        total = estimate_flops(cfg, prompt_len, "forward")
        total += sum(estimate_flops(cfg, prompt_len + i, "decode") for i in range(1, new_tokens))
    return batch_size * total


__all__ = [
    "CostConfig", "CostTracker", "estimate_flops", "generation_flops", "device_peak_flops", "format_report",
    "count_parameters", "grid_intensity_for", "add_cost_arguments", "cost_config_from_args", "cpu_model_name",
    "GPU_PEAKS_TFLOPS", "GPU_TDP_WATTS", "GPU_PRICE_PER_HOUR", "DEFAULT_GPU_TDP_WATTS",
    "DEFAULT_GPU_PRICE_PER_HOUR", "CPU_WATTS_PER_CORE", "CPU_PRICE_PER_CORE_HOUR", "WORLD_GRID_INTENSITY",
]
