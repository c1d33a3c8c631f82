"""The `loradesk` command, run in-process on tiny models."""
import pytest

from app.cli import main


def test_ask_streams_with_adapter(tiny_qwen, tiny_adapters, capsys):
    assert main(["adapters", "add", "math", str(tiny_adapters["qwen2"]["math"])]) == 0
    assert "found a MLX adapter" in capsys.readouterr().out
    args = ["ask", "--engine", "mlx", "--model", str(tiny_qwen), "--task", "math", "--max-tokens", "12", "--stats"]
    assert main(args + ["What is 2+2?"]) == 0
    out = capsys.readouterr()
    assert "adapter: math" in out.err and len(out.out.strip()) > 0
    assert main(args + ["--no-adapter", "What is 2+2?"]) == 0
    base = capsys.readouterr()
    assert "adapter: none" in base.err and base.out != out.out


def test_ask_reads_stdin(tiny_qwen, monkeypatch, capsys):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("A long article about sunsets."))
    assert main(["ask", "--engine", "mlx", "--model", str(tiny_qwen), "--task", "summarize",
                 "--option", "length=short", "--max-tokens", "5", "-"]) == 0
    assert "no adapter for 'summarize'" in capsys.readouterr().err


def test_adapters_list_and_errors(tiny_adapters, tmp_path, capsys):
    main(["adapters", "add", "code", str(tiny_adapters["qwen2"]["code"]), "--name", "c1"])
    capsys.readouterr()
    assert main(["adapters", "list"]) == 0
    out = capsys.readouterr().out
    assert "c1" in out and "mlx" in out and "loradesk train --task summarize" in out
    assert "shipped with LoRA Desk" in out  # math: the shipped adapter (no adapter of the user's own)
    assert main(["adapters", "add", "code", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_offline_model_is_one_clear_line(capsys):
    assert main(["ask", "--engine", "mlx", "--task", "math", "hi"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("loradesk: error: cannot download") and "Traceback" not in err


def test_bad_option_and_empty_input(tiny_qwen, capsys):
    assert main(["ask", "--model", str(tiny_qwen), "--task", "summarize", "--option", "length=huge", "x"]) == 2
    assert "length must be one of" in capsys.readouterr().err
    assert main(["ask", "--model", str(tiny_qwen), "--task", "math", "  "]) == 2
    assert "empty" in capsys.readouterr().err


def test_ask_cuts_a_long_input_and_says_so(tiny_qwen, tmp_path, capsys):
    import json
    import shutil

    small = tmp_path / "qwen2-256"
    shutil.copytree(tiny_qwen, small)
    cfg = json.loads((small / "config.json").read_text())
    (small / "config.json").write_text(json.dumps({**cfg, "max_position_embeddings": 256}))
    article = " ".join(f"Sentence {i} about the harbour." for i in range(300))
    for engine in ("mlx", "torch"):
        assert main(["ask", "--engine", engine, "--model", str(small), "--task", "summarize", "--max-tokens", "8",
                     "--stats", article]) == 0
        err = capsys.readouterr().err
        assert "tokens too long for the model's context; its end was cut" in err, err
        prompt = int(err.split("prompt ")[1].split(" tok")[0])
        assert prompt + 8 <= 256


def test_info_on_a_first_run_offline_reports_what_is_missing(capsys):
    """No model downloaded and no hub: info still answers (exit 0) and says what is missing."""
    from app.cli import main

    assert main(["info", "--engine", "torch"]) == 0
    out = capsys.readouterr().out
    assert "loaded:   nothing:" in out and "missing:  a model" in out
    assert "Qwen/Qwen2.5-1.5B-Instruct" in out  # which model it would have loaded
