"""`loradesk train --estimate` (training/estimate.py) on the tiny model: a few real steps are timed,
nothing is registered or kept, and the figures agree with a real run of the same settings."""
from __future__ import annotations

import re

import pytest

from app import store
from app.cli import main
from training import api
from training.config import TrainConfig
from training.estimate import estimate

from conftest import FIXTURES

DATA = FIXTURES / "data" / "gsm8k"  # 7 train rows; 30% of them held out for validation


def _config(tiny_qwen, engine: str, **kw) -> TrainConfig:
    base = dict(model=str(tiny_qwen), engine=engine, data=(str(DATA),), iters=8, batch_size=1, max_seq_length=1024,
                threads=1, eval_every=100, valid_fraction=0.3, register=False)
    return TrainConfig.for_task("math", **{**base, **kw})


def test_cli_estimate_measures_in_a_child_and_keeps_nothing(tiny_qwen, capsys, loradesk_home):
    assert main(["train", "--estimate", "--task", "math", "--engine", "mlx", "--model", str(tiny_qwen),
                 "--data", str(DATA), "--iters", "50", "--batch-size", "1", "--max-seq-length", "1024",
                 "--eval-every", "10", "--threads", "1", "--valid-fraction", "0.3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("estimate for math: 50 steps, batch 1, max 1024 tokens, measuring 3 steps on this machine\n")
    # validations at steps 0, 9, 19, 29, 39 and the last one (49)
    m = re.search(r"  mlx: ([\d.]+) s/step \(\d+ tokens/step; first step [\d.]+ s, load and data \d+ s, "
                  r"6 validations of \d+ s\) -> 50 steps take about [^;]+; peak memory ([\d.]+) GB", out)
    assert m, out
    # The child's own peak RSS: mlx and a model, far more than nothing, far less than this machine has.
    assert float(m.group(1)) > 0 and 0.1 < float(m.group(2)) < 8
    assert store.list_adapters() == []
    assert not any((loradesk_home / "runs" / "train").rglob("run.json"))  # no run left behind


def test_the_estimate_agrees_with_a_real_run(tiny_qwen, loradesk_home):
    cfg = _config(tiny_qwen, "torch")
    est = estimate(cfg, steps=3)
    assert (est.engine, est.total_steps, est.measured_steps, est.validations) == ("torch", 8, 3, 2)
    assert est.total_s == pytest.approx(est.load_s + 2 * est.validation_s + est.first_step_s + 7 * est.step_s)
    folder = api.train(cfg)
    import json

    meta = json.loads((folder / "loradesk.json").read_text())
    real = sorted(sec for _, _, sec, _ in meta["throughput_curve"][1:])  # the first step warms up
    real_step = real[len(real) // 2]
    # Tiny steps take milliseconds on a shared CPU: agreement within 5x still catches a wrong unit or a
    # per-batch vs per-step mix-up, which are off by 10x or more.
    assert 0.2 < est.step_s / real_step < 5, (est.step_s, real_step)


def test_mlx_estimate(tiny_qwen):
    est = estimate(_config(tiny_qwen, "mlx", iters=600, eval_every=200), steps=2)
    assert (est.engine, est.total_steps, est.measured_steps) == ("mlx", 600, 2)
    assert est.validations == 4 and est.validation_s > 0  # steps 0, 199, 399, 599
    assert est.step_s > 0 and est.peak_memory_gb > 0
    assert "mlx: " in est.summary() and "600 steps take about" in est.summary()
