from app.selftest import check_engine, run


def test_self_test_passes_on_mlx(capsys):
    assert run(["mlx"]) is True
    out = capsys.readouterr().out
    assert "self-test mlx: ok" in out and "self-test: passed" in out


def test_self_test_fails_when_an_engine_is_broken(monkeypatch, capsys):
    """A bundle whose engine cannot generate must exit non-zero, not pass."""
    from app.engine import mlx_engine

    def broken(self, *a, **k):
        raise RuntimeError("metallib not found")

    monkeypatch.setattr(mlx_engine.MLXEngine, "_mlx_stream", broken)
    assert run(["mlx"]) is False
    assert "self-test mlx: FAILED: RuntimeError: metallib not found" in capsys.readouterr().out
