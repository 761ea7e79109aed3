"""The one log schema (training/runlog.py): rows, old-row reading, TensorBoard tags and hparams,
status lines above the bar, the validation loss on the bar, and the one summary line."""

from __future__ import annotations

import json

import pytest

from transferlab.training.runlog import ROW_FIELDS, RunLog, normalize_row, read_rows, summary_line


def test_rows_share_one_schema_and_old_rows_read_alike(tmp_path):
    log = RunLog(tmp_path, tensorboard=False, progress=False)
    log.open()
    log.row("train", 1, 2.0, 0.5, 100.0, tokens=64, lr=1e-3, mlm_acc=0.1)
    log.row("val", 1, 2.5, 0.5, 100.0, tokens=64, ppl=12.2, mlm_loss=2.5)
    with pytest.raises(ValueError, match="split"):
        log.row("validation", 2, 1.0, 1.0, 1.0)
    log.close()
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [tuple(r)[:5] for r in rows] == [ROW_FIELDS, ROW_FIELDS]
    assert rows[1] == {"step": 1, "split": "val", "loss": 2.5, "elapsed_s": 0.5, "tokens_per_s": 100.0,
                       "tokens": 64, "ppl": 12.2, "mlm_loss": 2.5}
    old = {"split": "validation", "step": 4, "tokens": 10, "val_loss": 3.0, "val_ppl": 9.0, "val_mlm_acc": 0.2}
    assert normalize_row(old) == {"step": 4, "split": "val", "tokens": 10, "loss": 3.0, "ppl": 9.0, "mlm_acc": 0.2}
    assert normalize_row(rows[0]) == rows[0]
    (tmp_path / "old.jsonl").write_text(json.dumps({"split": "train", "step": 4, "loss": 2.0}) + "\n"
                                        + json.dumps(old) + "\n{torn")
    assert [r["split"] for r in read_rows(tmp_path / "old.jsonl", warn=False)] == ["train", "val"]


def test_open_drops_rows_beyond_the_resumed_step(tmp_path):
    log = RunLog(tmp_path, tensorboard=False, progress=False)
    log.open()
    for step in (1, 2, 3):
        log.row("train", step, 1.0, step, 1.0)
    log.row("val", 2, 4.0, 2, 1.0)
    log.close()
    again = RunLog(tmp_path, tensorboard=False, progress=False)
    kept = again.open(keep_upto_step=2)
    again.close()
    assert [(r["split"], r["step"]) for r in kept] == [("train", 1), ("train", 2), ("val", 2)]
    assert again.last_val_loss == 4.0
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3


def test_tensorboard_puts_both_splits_in_one_tag_family_and_logs_hparams(tmp_path):
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    log = RunLog(tmp_path, tensorboard=True, progress=False)
    log.open()
    log.log_hparams({"train.lr": 1e-3, "objective": "mlm", "train.betas": [0.9, 0.99]})
    log.row("train", 1, 2.0, 0.1, 10.0, acc=0.5)
    log.row("val", 1, 2.5, 0.1, 10.0, acc=0.4)
    log.close()
    (events,) = (tmp_path / "tensorboard").glob("events.out.tfevents.*")
    acc = ea.EventAccumulator(str(events))
    acc.Reload()
    assert {"loss/train", "loss/val", "acc/train", "acc/val"} <= set(acc.Tags()["scalars"])
    assert acc.Scalars("loss/val")[0].value == pytest.approx(2.5)
    assert "_hparams_/experiment" in acc.PluginTagToContent("hparams")


def test_status_lines_go_above_the_bar_and_the_bar_shows_the_val_loss(tmp_path, monkeypatch):
    from tqdm.auto import tqdm

    written = []
    monkeypatch.setattr(tqdm, "write", classmethod(lambda cls, msg, file=None, **kw: written.append(msg)))
    log = RunLog(tmp_path, tensorboard=False, progress=True)
    log.open()
    log.status("resumed from somewhere")
    log.progress(10.0, step=1, loss="2.0000")
    assert "val_loss" not in log._bar.postfix
    log.row("val", 1, 2.25, 0.1, 10.0)
    log.progress(20.0, step=2, loss="1.9000")
    assert "val_loss=2.2500" in log._bar.postfix and "loss=1.9000" in log._bar.postfix
    log.close()
    assert written == ["resumed from somewhere"]


def test_summary_line():
    s = {"steps": 6, "tokens": 1536, "train_seconds": 1.234, "tokens_per_s": 1244.7, "dtype": "fp32",
         "stopped_by": "max_steps", "val_loss": 4.5, "val_ppl": 90.017}
    assert summary_line(s) == ("trained 6 steps, 1,536 tokens in 1.2s (1,245 tokens/s, fp32), stopped by max_steps, "
                               "validation loss 4.5000 (ppl 90.02)")
    assert "validation" not in summary_line({**s, "val_loss": None})
