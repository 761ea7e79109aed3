"""Golden loss trajectories: fixed seed, tiny model, 5 optimizer steps per objective, fp32 with
deterministic algorithms. A change anywhere in the path (init, masking/noise, collation, loss
normalisation, optimizer, schedule) moves these numbers; if the change is intended, regenerate
them with ``python tests/parity/test_golden_losses.py`` and paste the printed table below.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from transferlab.models import build_model
from transferlab.objectives import build_objective
from transferlab.training.config import TrainConfig
from transferlab.training.loop import Trainer

# tests/ holds tiny.py; pytest puts it on sys.path, a script run (regenerating GOLDEN) does not
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny import golden_model_config as model_config  # noqa: E402
from tiny import golden_shards as shards  # noqa: E402
from tiny import golden_specials as specials  # noqa: E402

GOLDEN = {
    "mlm": [4.554279, 4.565574, 4.578924, 4.445603, 4.583709],
    "nsp": [5.266085, 5.237322, 5.287486, 5.180737, 5.210701],  # per-example pairs + masks
    "electra": [39.134723, 39.111292, 37.731213, 36.041271, 34.797343],
    "clm": [4.557108, 4.568072, 4.518826, 4.478003, 4.453478],
    "denoise": [4.564418, 4.585705, 4.535856, 4.512965, 4.485294],
    "span-corruption": [4.567707, 4.573228, 4.541480, 4.524580, 4.508709],  # per-example noise
    "plm": [4.595048, 4.573766, 4.586547, 4.501846, 4.569036],  # per-example orders
    "mtlm": [4.566614, 4.595801, 4.594427, 4.502287, 4.508681],  # per-example MLM streams (8062112)
    "mass": [4.585721, 4.556944, 4.569199, 4.539897, 4.548130],  # per-example fragments
    "bilm": [4.564336, 4.564345, 4.560296, 4.557605, 4.552981],
}


def trajectory(name: str, out: Path) -> list[float]:
    torch.use_deterministic_algorithms(True)
    try:
        sp = specials(name)
        objective = build_objective(name, sp)
        torch.manual_seed(0)
        model = build_model(model_config(name, sp))
        objective.check_model(model.config)
        cfg = TrainConfig(batch_size=4, seq_len=32, max_steps=5, lr=1e-2, warmup=0.2, eval_every=0, save_every=0,
                          log_every=1, dtype="fp32", seed=0, progress=False, tensorboard=False, num_threads=1)
        Trainer(model, objective, objective.dataset(shards(), cfg.seq_len), cfg, out).fit()
    finally:
        torch.use_deterministic_algorithms(False)
    return [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"train"' in x]


@pytest.mark.parametrize("name", list(GOLDEN))
def test_golden_loss_trajectory(name, tmp_path):
    losses = trajectory(name, tmp_path)
    assert len(losses) == 5
    np.testing.assert_allclose(losses, GOLDEN[name], rtol=0, atol=2e-4, err_msg=name)


if __name__ == "__main__":  # regenerate: python tests/parity/test_golden_losses.py
    import tempfile

    torch.set_num_threads(1)
    print("GOLDEN = {")
    for n in GOLDEN:
        with tempfile.TemporaryDirectory() as d:
            print(f"    {n!r}: [{', '.join(f'{x:.6f}' for x in trajectory(n, Path(d)))}],")
    print("}")
    sys.exit(0)
