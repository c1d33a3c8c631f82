"""`loradesk bench serve` on the tiny GGUF model: its JSON rows, the batching-off row measured in
the same run, and the target ratios computed from those rows."""
import json

import pytest

pytest.importorskip("llama_cpp")


def test_bench_serve_json_has_rows_sequential_and_ratios(tiny_ggufs, capsys, monkeypatch):
    from app.cli import main

    # One llama.cpp thread: two on a busy 2-core machine wait on each other at every op of the
    # tiny model (0.3 s a token instead of 1 ms).
    monkeypatch.setenv("LORADESK_THREADS", "1")
    assert main(["bench", "serve", "--engine", "llamacpp", "--model", str(tiny_ggufs["qwen2"]), "--clients", "1,4",
                 "--requests", "1", "--max-tokens", "4", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert [(row["clients"], row["adapters"]) for row in r["rows"]] == [
        (1, "same"), (1, "alternating"), (4, "same"), (4, "alternating")]
    for row in r["rows"] + r["sequential"]:
        assert not row["errors"] and row["requests"] == row["clients"]
        assert {"clients", "adapters", "p50_s", "p99_s", "p50_ttft_s", "tok_s"} <= set(row)
        assert 0 < row["p50_ttft_s"] <= row["p50_s"] <= row["p99_s"] and row["tok_s"] > 0
    assert r["max_batch"] > 1 and r["sequential_tok_s"] == r["sequential"][0]["tok_s"]
    rows = {(row["clients"], row["adapters"]): row for row in r["rows"]}
    ratios = r["ratios"]
    assert ratios["same_4_clients_vs_1_client_tok_s"] == round(rows[4, "same"]["tok_s"] / rows[1, "same"]["tok_s"], 2)
    assert ratios["same_4_clients_batched_vs_sequential_tok_s"] == round(
        rows[4, "same"]["tok_s"] / r["sequential_tok_s"], 2)
    t = r["switch_back_ttft"]
    assert ratios["switch_back_vs_no_switch_ttft"] == t["ratio"] == round(t["switch_back_s"] / t["no_switch_s"], 2)
