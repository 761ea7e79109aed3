"""Cost accounting: analytic FLOPs against torch's FlopCounterMode, peaks, and the run report.

FLOPs are measured with ``attn_impl="math"`` because FlopCounterMode has no formula for the CPU
flash-attention kernel that SDPA dispatches to (it would count attention as zero); the analytic
count does not depend on the attention implementation.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from transferlab import cost
from transferlab.config import get_preset
from transferlab.cost import (
    CostConfig,
    CostTracker,
    add_cost_arguments,
    cost_config_from_args,
    device_peak_flops,
    estimate_flops,
    format_report,
    generation_flops,
)
from transferlab.errors import ConfigError
from transferlab.models import build_model

B, T = 2, 128


@pytest.fixture(autouse=True)
def _hermetic(tmp_path, monkeypatch):
    """Peak cache in a temp dir, a short peak benchmark, no cost settings from the environment."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(cost.peaks, "_PEAK_BENCH_SECONDS", 0.1)
    for var in ("TRANSFERLAB_PRICE_PER_HOUR", "TRANSFERLAB_GRID_INTENSITY", "TRANSFERLAB_COUNTRY",
                "TRANSFERLAB_PEAK_FLOPS"):
        monkeypatch.delenv(var, raising=False)


def mini(name: str, **kw):
    """A '-mini' preset (4 layers / d 256, BART 2+2) with a 2k vocabulary, math attention."""
    return get_preset(name, vocab_size=2048, attn_impl="math", dropout=0.0, attention_dropout=0.0, **kw)


def measured_train_flops(cfg, seq_len: int, decoder_len: int | None = None, n_masked: int | None = None) -> float:
    """FlopCounterMode count of forward + backward of every head, per sequence."""
    torch.manual_seed(0)
    model = build_model(cfg)
    ids = torch.randint(5, cfg.vocab_size, (B, seq_len))
    kw = {}
    if cfg.is_encoder_decoder:
        kw["decoder_input_ids"] = torch.randint(5, cfg.vocab_size, (B, decoder_len or seq_len))
    with FlopCounterMode(display=False) as counter:
        out = model.backbone(input_ids=ids, **kw)
        loss = 0.0
        for name in model.heads:
            if name == "lm" and n_masked is not None:  # sparse MLM: gather, then project
                mask = torch.zeros(B, seq_len, dtype=torch.bool)
                mask[:, :n_masked] = True
                loss = loss + model.heads["lm"](out.last_hidden_state[mask]).float().sum()
            else:
                loss = loss + model.run_head(name, out).float().sum()
        loss.backward()
    return counter.get_total_flops() / B


@pytest.mark.parametrize(
    "name,kw,dec",
    [
        ("bert-mini", {"heads": {"lm": {}, "nsp": {}}}, None),  # MLM + NSP, pooler, LM transform
        ("gpt-mini", {}, None),
        ("bart-mini", {}, 64),  # encoder 128 + decoder 64 tokens, cross-attention
        ("t5-mini", {}, 128),  # relative positions, d_head != d_model / n_heads, no biases
        ("gpt-mini", {"activation": "swiglu", "position": "rotary"}, None),  # gated MLP
        # ELECTRA-Small-style embedding projection (E -> d) and MLM transform (d -> E, tied (V, E))
        ("bert-mini", {"embedding_size": 64, "pooler": False, "heads": {"lm": {}, "rtd": {}}}, None),
    ],
)
def test_train_flops_match_flop_counter(name, kw, dec):
    cfg = mini(name, **kw)
    measured = measured_train_flops(cfg, T, dec)
    estimated = estimate_flops(cfg, T, "train", decoder_len=dec)
    # the issue asks for 10%; both count exactly the matmuls, so they agree far closer
    assert estimated == pytest.approx(measured, rel=0.01), (estimated, measured)


@pytest.mark.parametrize("embedding_size", [None, 32])
def test_electra_pair_flops_match_flop_counter(embedding_size):
    """What pretrain bills an ELECTRA step (discriminator on every token + the generator's sparse
    MLM through generator_proj and a head back to the embedding width) is what the step runs."""
    import numpy as np

    from tiny import bert_ids, encoder_cfg, windows

    from transferlab.objectives import build_objective

    torch.manual_seed(0)
    model = build_model(encoder_cfg(heads={"rtd": {}}, type_vocab_size=2, d_model=64, n_heads=4, d_ff=128,
                                    embedding_size=embedding_size, attn_impl="math", dropout=0.0,
                                    attention_dropout=0.0))
    ob = build_objective("electra", bert_ids())
    pair = ob.wrap_model(model)
    b = ob.collate(windows(4, 30), np.random.default_rng(0))
    n_seq, seq = b["input_ids"].shape
    with FlopCounterMode(display=False) as counter:
        ob.loss(pair, b).loss_sum.backward()
    per_seq = int((b["labels"] != -100).sum()) / n_seq
    estimated = n_seq * (estimate_flops(model.config, seq, "train", None, 0.0)
                         + estimate_flops(pair.generator_flops_config, seq, "train", None, per_seq))
    assert estimated == pytest.approx(counter.get_total_flops(), rel=1e-6)


def test_sparse_mlm_flops_only_project_predicted_positions():
    cfg = mini("bert-mini")
    n_masked = 19  # ~15% of 128
    measured = measured_train_flops(cfg, T, n_masked=n_masked)
    sparse = estimate_flops(cfg, T, "train", n_predicted=n_masked)
    assert sparse == pytest.approx(measured, rel=0.01)
    dense = estimate_flops(cfg, T, "train")
    # the saving is exactly the LM head (transform d*d + projection d*V) on the unpredicted rows
    d, V = cfg.d_model, cfg.vocab_size
    assert dense - sparse == pytest.approx(6 * (T - n_masked) * (d * d + d * V))
    # the method on the model is the same function
    assert build_model(cfg).estimate_flops(T, n_predicted=n_masked) == sparse


@torch.no_grad()
def test_forward_and_decode_flops_match_flop_counter():
    cfg = get_preset("gpt-mini", vocab_size=1024, n_layers=2, d_model=128, n_heads=4, d_ff=512, attn_impl="math")
    model = build_model(cfg).eval()
    ids = torch.randint(0, 1024, (1, 48))
    with FlopCounterMode(display=False) as prefill:
        out = model(input_ids=ids, use_cache=True)
    assert estimate_flops(cfg, 48, "forward") == pytest.approx(prefill.get_total_flops(), rel=0.01)
    with FlopCounterMode(display=False) as step:
        model(input_ids=ids[:, :1], past_key_values=out.past_key_values, use_cache=True)
    assert estimate_flops(cfg, 49, "decode") == pytest.approx(step.get_total_flops(), rel=0.01)

    # a whole KV-cached greedy generation: prefill + (new - 1) decode steps
    with FlopCounterMode(display=False) as gen:
        out = model(input_ids=ids, use_cache=True)
        for _ in range(5):
            nxt = out.logits[:, -1:].argmax(-1)
            out = model(input_ids=nxt, past_key_values=out.past_key_values, use_cache=True)
    assert generation_flops(cfg, 48, 6) == pytest.approx(gen.get_total_flops(), rel=0.01)


@torch.no_grad()
def test_encoder_decoder_decode_flops_count_cross_attention_over_the_encoder():
    cfg = get_preset("bart-mini", vocab_size=1024, d_model=128, n_heads=4, d_ff=512, attn_impl="math")
    model = build_model(cfg).eval()
    src = torch.randint(3, 1024, (1, 40))
    start = torch.full((1, 1), 2)
    with FlopCounterMode(display=False) as prefill:  # encoder + first decoder token (+ cross K/V)
        out = model(input_ids=src, decoder_input_ids=start, use_cache=True)
    assert estimate_flops(cfg, 40, "forward", decoder_len=1) == pytest.approx(prefill.get_total_flops(), rel=0.01)
    cache = out.past_key_values
    with FlopCounterMode(display=False) as step:  # second decoder token: cached self + cross K/V
        model(encoder_outputs=out.encoder_last_hidden_state, attention_mask=None,
              decoder_input_ids=out.logits.argmax(-1), past_key_values=cache, use_cache=True)
    assert estimate_flops(cfg, 40, "decode", decoder_len=2) == pytest.approx(step.get_total_flops(), rel=0.01)


def test_estimate_flops_rejects_bad_arguments():
    cfg = mini("gpt-mini")
    with pytest.raises(ValueError, match="mode"):
        estimate_flops(cfg, 128, "backward")
    with pytest.raises(ValueError, match="decoder_len"):
        estimate_flops(cfg, 128, decoder_len=64)
    with pytest.raises(ValueError, match="seq_len"):
        estimate_flops(cfg, 0)


# ----------------------------------------------------------------------------- peaks
def test_cpu_matmul_benchmark_reports_its_cpu_share():
    flops, share = cost.peaks._benchmark_matmul("cpu", "fp32", 256, 0.05)
    assert flops > 1e8 and 0 < share < 1.5  # 1 thread: about 1.0 on an idle core, less when others run


def test_cpu_peak_is_measured_once_and_cached(tmp_path, monkeypatch):
    real = cost.peaks._benchmark_matmul
    # the real benchmark, but as on an idle machine (the suite's other worker may share the cores)
    monkeypatch.setattr(cost.peaks, "_benchmark_matmul", lambda *a: (real(*a)[0], 1.0))
    peak, source = device_peak_flops("cpu", "fp32")
    assert peak > 1e8 and source.startswith("measured: 1024^3 fp32 matmul, 1 thread")
    cache_file = tmp_path / "cache" / "transferlab" / "peak.json"
    entry = json.loads(cache_file.read_text())
    (key,) = entry
    assert "fp32" in key and "threads=1" in key and torch.__version__ in key
    calls = []
    monkeypatch.setattr(cost.peaks, "_benchmark_matmul", lambda *a: calls.append(a) or (peak / 2, 1.0))
    assert device_peak_flops("cpu", "fp32") == (peak, source + " (cached)")
    assert not calls
    # a re-measurement on a busier machine never lowers the peak
    assert device_peak_flops("cpu", "fp32", refresh=True)[0] == peak and len(calls) == 1


def test_cpu_peak_measured_under_load_is_not_cached(tmp_path, monkeypatch):
    # the benchmark got 40% of its threads' CPU time: other jobs had the cores
    monkeypatch.setattr(cost.peaks, "_benchmark_matmul", lambda *a: (2e11, 0.4))
    peak, source = device_peak_flops("cpu", "bf16")
    assert peak == 2e11 and source.startswith("measured under load:") and "40% of the CPU: MFU overstated" in source
    assert not (tmp_path / "cache" / "transferlab" / "peak.json").exists()
    # a quiet measurement later is cached, and a disturbed one never replaces it
    monkeypatch.setattr(cost.peaks, "_benchmark_matmul", lambda *a: (9e11, 0.97))
    assert device_peak_flops("cpu", "bf16") == (9e11, "measured: 1024^3 bf16 matmul, 1 thread")
    monkeypatch.setattr(cost.peaks, "_benchmark_matmul", lambda *a: (3e11, 0.3))
    assert device_peak_flops("cpu", "bf16", refresh=True)[0] == 9e11
    assert device_peak_flops("cpu", "bf16") == (9e11, "measured: 1024^3 bf16 matmul, 1 thread (cached)")


def test_peak_under_load_warning_is_printed_once_per_process(monkeypatch, caplog):
    # a compare grid measures once per cell: the "not caching" warning is said once, the
    # per-run source string still says every time that the figure was measured under load
    monkeypatch.setattr(cost.peaks, "_warned_under_load", False)
    monkeypatch.setattr(cost.peaks, "_benchmark_matmul", lambda *a: (2e11, 0.4))
    with caplog.at_level(logging.WARNING, logger="transferlab.cost"):
        sources = [device_peak_flops("cpu", "bf16")[1] for _ in range(3)]
    assert all(s.startswith("measured under load:") for s in sources)
    assert sum("not caching" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize(
    "name,dtype,tflops",
    [
        ("NVIDIA H100 80GB HBM3", "bf16", 989.5),
        ("NVIDIA H100 PCIe", "bf16", 756.0),
        ("NVIDIA H200", "fp32", 67.0),
        ("NVIDIA A100-SXM4-80GB", torch.bfloat16, 312.0),
        ("NVIDIA L4", "bf16", 121.0),
        ("NVIDIA L40S", "bf16", 362.05),
        ("Tesla T4", "fp16", 65.0),
        ("Tesla V100-SXM2-16GB", "fp32", 15.7),
        ("NVIDIA GeForce RTX 4090", "bf16", 165.2),
    ],
)
def test_gpu_peak_table(monkeypatch, name, dtype, tflops):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: name)
    peak, source = device_peak_flops("cuda", dtype)
    assert peak == pytest.approx(tflops * 1e12) and source.startswith(f"table: {name}")


def test_gpu_fp32_uses_tf32_peak_when_torch_allows_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: "NVIDIA A100-SXM4-40GB")
    monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "high")
    assert device_peak_flops("cuda", "fp32") == (156e12, "table: NVIDIA A100-SXM4-40GB tf32 dense")


def test_unknown_gpu_or_missing_format_is_measured(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: "Tesla T4")  # no bf16 tensor cores
    seen = []
    monkeypatch.setattr(cost.peaks, "_benchmark_matmul", lambda dev, dt, n, s: seen.append((str(dev), dt, n)) or (3e12, None))
    assert device_peak_flops("cuda", "bf16") == (3e12, "measured: 4096^3 bf16 matmul")
    assert seen == [("cuda", "bf16", 4096)]


# ----------------------------------------------------------------------------- the tracker
def tiny_gpt():
    cfg = get_preset("gpt-mini", vocab_size=256, n_layers=2, d_model=32, n_heads=2, d_ff=64, max_positions=64)
    return build_model(cfg)


def train_steps(model, tracker, steps=4, batch=4, seq=32):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(steps):
        ids = torch.randint(0, model.config.vocab_size, (batch, seq))
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
        tracker.add(tokens=ids.numel())


def test_report_of_a_training_run(tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    run = tmp_path / "run"
    model = tiny_gpt()
    tracker = CostTracker(model, kind="pretrain", out_dir=run, dtype="fp32", seq_len=32,
                          config=CostConfig(country_iso_code="FRA", price_per_hour=2.0))
    tracker.start()
    train_steps(model, tracker)
    report = tracker.stop()

    assert json.loads((run / "report.json").read_text()) == report
    assert report["params_total"] == model.num_parameters()
    assert 0 < report["params_non_embedding"] < report["params_total"]
    assert report["tokens"] == 4 * 4 * 32 and report["steps"] == 4
    assert report["flops"] == pytest.approx(4 * 4 * estimate_flops(model.config, 32))
    assert report["wall_seconds"] > 0
    assert report["tokens_per_second"] == pytest.approx(report["tokens"] / report["wall_seconds"])
    assert 0 < report["mfu"] <= 1
    assert report["mfu"] == pytest.approx(report["flops_per_second"] / report["peak_flops"])
    assert report["peak_source"].startswith("measured")
    assert report["price_usd"] == pytest.approx(report["wall_seconds"] / 3600 * 2.0)
    assert report["energy_source"] in ("codecarbon", "estimate") and report["energy_kwh"] > 0
    assert report["energy_method"].startswith("codecarbon")  # codecarbon ran on this machine
    if not Path("/sys/class/powercap").exists() and not torch.cuda.is_available():
        # no RAPL and no GPU: codecarbon can only model the power, and the report must say so
        assert report["energy_source"] == "estimate"
    assert report["grid_intensity_g_per_kwh"] == cost.grid_intensity_for("FRA")[0]  # France's grid
    assert report["grid_intensity_g_per_kwh"] < 150  # (mostly nuclear: far below the world's 475)
    assert report["co2e_kg"] == pytest.approx(report["energy_kwh"] * report["grid_intensity_g_per_kwh"] / 1000)
    assert list(cwd.iterdir()) == []  # no emissions.csv or other codecarbon litter
    assert sorted(p.name for p in run.iterdir()) == ["report.json"]

    text = format_report(report)
    lines = text.splitlines()
    assert len(lines) == 7
    assert len({line.index(line.split()[1]) for line in lines}) == 1  # values aligned in one column
    assert "MFU" in text and "kWh" in text and "$" in text and "CO2e" in text


class CPU:  # named like codecarbon's hardware classes, which the verdict inspects
    def __init__(self, mode):
        self._mode, self._tdp = mode, 8


class RAM:
    pass


class FakeCodecarbon:
    def __init__(self, mode, kwh=2e-6):
        self._hardware = [RAM(), CPU(mode)]
        self.final_emissions_data = SimpleNamespace(energy_consumed=kwh)
        self.stopped = False

    def stop(self):
        self.stopped = True


@pytest.mark.parametrize("mode", ["constant", "cpu_load"])
def test_codecarbon_without_power_counter_is_labelled_estimate(monkeypatch, mode):
    fake = FakeCodecarbon(mode)
    monkeypatch.setattr(cost.tracker, "_start_codecarbon", lambda out_dir, device: fake)
    with CostTracker(tiny_gpt(), seq_len=32, config=CostConfig(peak_flops=1e12)) as tracker:
        train_steps(tiny_gpt(), tracker, steps=1)
    r = tracker.report
    assert fake.stopped
    assert r["energy_source"] == "estimate" and r["energy_kwh"] == 2e-6
    assert f"CPU: {mode} model at 8 W TDP (estimate)" in r["energy_method"]
    assert "(estimate)" in format_report(r).splitlines()[5]


def test_codecarbon_reading_rapl_is_labelled_measured(monkeypatch):
    monkeypatch.setattr(cost.tracker, "_start_codecarbon", lambda out_dir, device: FakeCodecarbon("intel_rapl"))
    with CostTracker(tiny_gpt(), seq_len=32, config=CostConfig(peak_flops=1e12)) as tracker:
        train_steps(tiny_gpt(), tracker, steps=1)
    assert tracker.report["energy_source"] == "codecarbon"
    assert "CPU: intel_rapl (measured)" in tracker.report["energy_method"]
    assert "measured by codecarbon" in format_report(tracker.report)
    assert "estimate" not in format_report(tracker.report).splitlines()[5]


def test_failing_codecarbon_falls_back_to_tdp_times_time(monkeypatch):
    def broken(out_dir, device):
        raise PermissionError("/sys/class/powercap/intel-rapl:0/energy_uj: permission denied")

    monkeypatch.setattr(cost.tracker, "_start_codecarbon", broken)
    with CostTracker(tiny_gpt(), seq_len=32, config=CostConfig(peak_flops=1e12, grid_intensity=100.0)) as tracker:
        time.sleep(0.05)
    r = tracker.report
    assert r["energy_source"] == "estimate"
    assert "TDP x time" in r["energy_method"] and "permission denied" in r["energy_method"]
    watts = torch.get_num_threads() * cost.CPU_WATTS_PER_CORE
    assert r["energy_kwh"] == pytest.approx(watts * r["wall_seconds"] / 3.6e6)
    assert r["co2e_kg"] == pytest.approx(r["energy_kwh"] * 100.0 / 1000)
    assert "estimate" in format_report(r)


def test_track_energy_false_never_starts_codecarbon(monkeypatch):
    monkeypatch.setattr(cost.tracker, "_start_codecarbon", lambda *a: pytest.fail("codecarbon started"))
    with CostTracker(tiny_gpt(), config=CostConfig(track_energy=False, peak_flops=1e12)) as tracker:
        tracker.add(tokens=10, flops=5e9)
    assert tracker.report["energy_source"] == "estimate"
    assert "codecarbon disabled" in tracker.report["energy_method"]
    assert tracker.report["flops"] == 5e9 and tracker.report["flops_source"] == "given by the caller"


def test_sparse_mlm_steps_and_pause(monkeypatch):
    cfg = get_preset("bert-tiny", vocab_size=512)
    model = build_model(cfg)
    with CostTracker(model, kind="pretrain", seq_len=64, config=CostConfig(track_energy=False, peak_flops=1e12)) as t:
        t.add(tokens=8 * 64, n_predicted=80)  # 10 masked positions per sequence on average
        with t.pause():  # evaluation: not part of throughput
            time.sleep(0.2)
    r = t.report
    assert r["flops"] == pytest.approx(8 * estimate_flops(cfg, 64, n_predicted=10))
    assert r["compute_seconds"] == pytest.approx(r["wall_seconds"] - 0.2, abs=0.05)
    assert r["tokens_per_second"] == pytest.approx(r["tokens"] / r["compute_seconds"])
    assert r["price_usd"] == pytest.approx(r["wall_seconds"] / 3600 * r["price_per_hour"])


def test_interrupted_run_still_writes_its_report(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with CostTracker(tiny_gpt(), out_dir=tmp_path, config=CostConfig(track_energy=False, peak_flops=1e12)) as t:
            t.add(tokens=100, flops=1e9)
            raise KeyboardInterrupt
    r = json.loads((tmp_path / "report.json").read_text())
    assert r["interrupted"] is True and r["tokens"] == 100
    assert "(interrupted)" in format_report(r)


def test_report_json_keeps_other_writers_keys(tmp_path):
    (tmp_path / "report.json").write_text(json.dumps({"accuracy": 0.9, "tokens": -1}))
    with CostTracker(tiny_gpt(), out_dir=tmp_path, config=CostConfig(track_energy=False, peak_flops=1e12)) as t:
        t.add(tokens=7, flops=1.0)
    r = json.loads((tmp_path / "report.json").read_text())
    assert r["accuracy"] == 0.9 and r["tokens"] == 7


# ----------------------------------------------------------------------------- configuration
def test_default_cpu_price_and_env_overrides(monkeypatch):
    with CostTracker(tiny_gpt(), config=CostConfig(track_energy=False, peak_flops=1e12)) as t:
        pass
    assert t.report["price_per_hour"] == pytest.approx(torch.get_num_threads() * cost.CPU_PRICE_PER_CORE_HOUR)
    assert t.report["country_iso_code"] == "USA"
    monkeypatch.setenv("TRANSFERLAB_PRICE_PER_HOUR", "3.5")
    monkeypatch.setenv("TRANSFERLAB_COUNTRY", "deu")
    monkeypatch.setenv("TRANSFERLAB_PEAK_FLOPS", "2e12")
    with CostTracker(tiny_gpt(), config=CostConfig(track_energy=False)) as t:
        pass
    assert t.report["price_per_hour"] == 3.5 and t.report["country_iso_code"] == "DEU"
    assert t.report["peak_flops"] == 2e12 and t.report["peak_source"] == "config"
    assert t.report["grid_intensity_g_per_kwh"] > 100  # Germany's mix, from codecarbon's table


@pytest.mark.parametrize(
    "config,env,match",
    [
        (CostConfig(country_iso_code="Frankreich"), {}, "country_iso_code"),
        (CostConfig(country_iso_code="XYZ"), {}, "XYZ"),
        (CostConfig(price_per_hour=-1.0), {}, "price_per_hour"),
        (CostConfig(), {"TRANSFERLAB_PRICE_PER_HOUR": "cheap"}, "TRANSFERLAB_PRICE_PER_HOUR='cheap'"),
        (CostConfig(), {"TRANSFERLAB_GRID_INTENSITY": "x"}, "gCO2e/kWh"),
    ],
)
def test_bad_settings_are_config_errors(monkeypatch, config, env, match):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError, match=match):
        t = CostTracker(tiny_gpt(), config=config.__class__(**{**config.__dict__, "track_energy": False, "peak_flops": 1e12}))
        t.start()
        t.stop()


def test_bad_dtype_is_a_config_error():
    with pytest.raises(ConfigError, match="dtype"):
        CostTracker(tiny_gpt(), dtype="int8")


def test_cli_flags_build_the_config():
    parser = argparse.ArgumentParser()
    add_cost_arguments(parser)
    args = parser.parse_args(["--price-per-hour", "1.5", "--country", "fra", "--no-energy"])
    cfg = cost_config_from_args(args).resolved()
    assert (cfg.price_per_hour, cfg.country_iso_code, cfg.track_energy, cfg.grid_intensity) == (1.5, "FRA", False, None)
    assert "--grid-intensity" in parser.format_help()
