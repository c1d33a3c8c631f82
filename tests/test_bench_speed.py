"""`loradesk bench speed` on tiny models: every engine reports the same keys, measured the same way
(decode steps over their own time, memory from the process), with its raw library beside it."""
import json

import pytest

from app.cli import main

KEYS = ("switch_p50_ms", "switch_p99_ms", "base_decode_tps", "adapter_decode_tps", "adapter_decode_ratio",
        "reference", "reference_decode_tps", "engine_vs_reference_ratio", "adapter_memory_ratio",
        "base_decode_noadapter_tps")


@pytest.mark.parametrize("kind", ["llamacpp", "torch"])
def test_bench_speed_reports_every_figure(kind, tiny_qwen, tiny_ggufs, capsys):
    model = tiny_ggufs["qwen2"] if kind == "llamacpp" else tiny_qwen
    args = ["bench", "speed", "--engine", kind, "--model", str(model), "--switches", "50", "--max-tokens", "12",
            "--rounds", "1", "--json"]
    if kind == "llamacpp":
        args += ["--vs", f"torch={tiny_qwen}"]
    assert main(args) == 0
    r = json.loads(capsys.readouterr().out)
    for key in KEYS:
        assert key in r, key
    assert 0 < r["switch_p50_ms"] <= r["switch_p99_ms"] < 50
    assert r["base_decode_tps"] > 0 and r["adapter_decode_tps"] > 0 and r["reference_decode_tps"] > 0
    # Every decode ratio is to the base with no adapter loaded (a second engine, interleaved).
    noadapter = r["base_decode_noadapter_tps"]
    assert r["adapter_decode_ratio"] == pytest.approx(r["adapter_decode_tps"] / noadapter, rel=1e-3)
    assert r["resident_decode_ratio"] == pytest.approx(r["base_decode_tps"] / noadapter, rel=1e-3)
    assert r["adapter_disk_bytes"] > 0 and r["adapter_resident_bytes"] is not None
    merged = {"adapter_merged"} if kind == "llamacpp" else set()
    assert set(r["answer_tokens"]) == {"base_noadapter", "base", "adapter"} | merged
    if kind == "llamacpp":
        assert r["merged_decode_ratio"] == pytest.approx(r["merged_decode_tps"] / noadapter, rel=1e-3)
        assert r["merge_seconds"] > 0 and r["merge_bytes"] > 0
        # An F32 base merges exactly (up to summation order): same logits' change, same answers.
        assert r["merged_vs_lora_logit_corr_min"] > 0.999
        assert r["merged_same_greedy_answers"].startswith("4/4")
        assert len(r["merged_greedy_tokens_before_they_differ"]) == 4 and r["merge_type"] == "Q8_0"
        assert "weight repacking" in r["cpu"]
        assert r["torch_base_decode_tps"] > 0
        assert r["base_decode_vs_torch_ratio"] == pytest.approx(r["base_decode_tps"] / r["torch_base_decode_tps"],
                                                                rel=1e-3)
    with pytest.raises(SystemExit):
        main(["bench", "speed", "--engine", "nope"])


def test_bench_speed_vs_needs_engine_equals_model(tiny_ggufs, capsys):
    assert main(["bench", "speed", "--engine", "llamacpp", "--model", str(tiny_ggufs["qwen2"]), "--vs", "torch"]) == 2
    assert "--vs takes ENGINE=MODEL" in capsys.readouterr().err


def test_bench_speed_measures_a_given_adapter_active(tiny_qwen, tiny_adapters, capsys):
    """--adapter: a trained adapter (its rank and layers set its cost) is the one measured active."""
    folder = tiny_adapters["qwen2"]["paraphrase"]
    assert main(["bench", "speed", "--engine", "torch", "--model", str(tiny_qwen), "--switches", "10",
                 "--max-tokens", "4", "--rounds", "1", "--adapter", str(folder), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["adapters"].startswith(f"math: {folder}; the others random rank-16")
    assert r["adapter_count"] == 4 and r["adapter_decode_tps"] > 0
