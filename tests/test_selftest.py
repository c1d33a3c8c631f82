from app.selftest import check_engine, run


def test_self_test_passes_on_mlx(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("LORADESK_HOME", str(tmp_path / "user-home"))
    assert run(["mlx"]) is True
    out = capsys.readouterr().out
    assert "self-test mlx: ok" in out and "self-test mlx training: ok" in out and "self-test: passed" in out
    # its training runs and adapters went to a throw-away home, not the user's
    import os

    assert os.environ["LORADESK_HOME"] == str(tmp_path / "user-home")
    assert not any((tmp_path / "user-home").rglob("*.safetensors"))


def test_self_test_fails_when_an_engine_is_broken(monkeypatch, capsys):
    """A bundle whose engine cannot generate must exit non-zero, not pass."""
    from app.engine import mlx_engine

    def broken(self, *a, **k):
        raise RuntimeError("metallib not found")

    monkeypatch.setattr(mlx_engine.MLXEngine, "_mlx_stream", broken)
    assert run(["mlx"]) is False
    assert "self-test mlx: FAILED: RuntimeError: metallib not found" in capsys.readouterr().out


def test_self_test_sandbox_check_passes(capsys):
    from app.selftest import check_sandbox

    lines = []
    check_sandbox(lines.append)
    assert "right solution passed" in lines[0] and "endless loop timed out" in lines[0]


def test_gui_check_opens_the_window_and_loads_a_tiny_model(tmp_path, monkeypatch):
    from app.selftest import check_gui

    monkeypatch.setenv("LORADESK_HOME", str(tmp_path / "user-home"))
    lines = []
    check_gui(tmp_path, lines.append, engine="mlx")
    assert lines[-1] == "  gui: main window opened and loaded the tiny model"
    # It quit because the model had loaded, and took the screenshot after that, not at a fixed time.
    events = [line.split()[1] for line in lines[:-1]]
    assert events.index("model") < events.index("screenshot") < events.index("closed")
    assert any("window shown" in line for line in lines) and any("loaded" in line for line in lines[:-1])
    # it ran in its own home: the user's settings were not touched
    assert not (tmp_path / "user-home" / "settings.json").exists()
    assert (tmp_path / "home" / "settings.json").exists()


def test_gui_check_fails_when_the_model_does_not_load(tmp_path, monkeypatch):
    """A window that opens but cannot load the model is a failed check, not a pass."""
    import pytest

    from app import selftest

    def broken_model(folder, arch):
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{not json")
        return folder

    monkeypatch.setattr("app.tiny.build_tiny_model", broken_model)
    with pytest.raises(AssertionError, match="did not load the tiny model"):
        selftest.check_gui(tmp_path, lambda line: None, engine="mlx")


def test_entry_point_runs_python_source_like_python_c():
    """A bundle has no python binary: `loradesk --python-c CODE ARGS` must behave like `python -c`."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "app", "--python-c", "import sys; print(__name__, sys.argv)", "x"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "__main__ ['-c', 'x']"


def test_sandbox_runs_through_a_frozen_executable(tmp_path, monkeypatch):
    """In a bundle the sandbox starts the bundle's executable with --python-c; the limits still hold."""
    import sys
    from pathlib import Path

    from app.bench import sandbox

    root = Path(__file__).resolve().parent.parent
    fake = tmp_path / "loradesk"  # stands in for the bundle's executable (the sandbox clears the env)
    entry = tmp_path / "entry.py"
    entry.write_text(f"import sys\nsys.path.insert(0, {str(root)!r})\nfrom app.__main__ import main\nsys.exit(main())\n")
    fake.write_text(f'#!/bin/sh\nexec {sys.executable} {entry} "$@"\n')
    fake.chmod(0o755)
    tmp_path.chmod(0o755)
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "executable", str(fake))
    sandbox._interpreter.cache_clear()
    try:
        assert sandbox._interpreter(False) == (str(fake), "--python-c")
        ok = sandbox.run_python("print(sum(range(5)))")
        assert ok.passed and ok.stdout.strip() == "10"
        loop = sandbox.run_python("while True:\n    pass\n", timeout=1.5)
        assert loop.timed_out and not loop.passed
        crash = sandbox.run_python("raise SystemExit(3)")
        assert not crash.passed and crash.exit_code == 3
    finally:
        sandbox._interpreter.cache_clear()


def test_default_engine_falls_back_to_the_installed_one(monkeypatch):
    """llama.cpp off Apple Silicon without CUDA, torch with CUDA, MLX on Apple Silicon; a bundle
    without one of them (or a partial install) never defaults to a missing engine."""
    import platform
    import sys

    import app.engine as engines

    monkeypatch.delenv("LORADESK_ENGINE", raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(engines, "has_cuda", lambda: False)
    assert set(engines.installed_engines()) == {"mlx", "torch", "llamacpp"}  # this test environment has all
    kind, why = engines.default_engine()
    assert kind == "llamacpp" and "no Apple Silicon or CUDA" in why
    monkeypatch.setattr(engines, "has_cuda", lambda: True)
    assert engines.default_engine()[0] == "torch"
    monkeypatch.setattr(engines, "has_cuda", lambda: False)
    monkeypatch.setattr(engines, "installed_engines", lambda: ["mlx", "torch"])
    kind, why = engines.default_engine()
    assert kind == "torch" and "llama-cpp-python is not installed" in why
    monkeypatch.setattr(engines, "installed_engines", lambda: ["mlx"])
    kind, why = engines.default_engine()
    assert kind == "mlx" and "neither llama-cpp-python nor torch" in why
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setattr(platform, "machine", lambda: "arm64")
    assert engines.default_engine()[0] == "mlx"
    monkeypatch.setattr(engines, "installed_engines", lambda: ["llamacpp"])
    assert engines.default_engine()[0] == "llamacpp"
    monkeypatch.setenv("LORADESK_ENGINE", "torch")
    assert engines.default_engine() == ("torch", "set by LORADESK_ENGINE")


def test_self_test_jobs_check_runs_a_spawned_process():
    import os

    from app.selftest import check_jobs

    lines = []
    check_jobs(lines.append)
    assert lines[0].startswith("  jobs: a spawned process (pid ") and f"(pid {os.getpid()})" not in lines[0]


def test_gui_quit_after_settles_at_once_when_no_model_is_on_the_machine(tmp_path):
    """The plain app on a fresh machine (the bundle check): nothing to load, so it quits right
    away with its screenshot instead of waiting out the timeout."""
    import os
    import subprocess
    import sys
    import time

    shot = tmp_path / "window.png"
    env = {**os.environ, "LORADESK_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1", "QT_QPA_PLATFORM": "offscreen"}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "app", "gui", "--engine", "mlx", "--model", "someorg/not-here",
                           "--quit-after", "600", "--screenshot", str(shot)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "gui: no model on this machine to load" in proc.stdout and shot.exists()
    assert time.monotonic() - t0 < 300  # not the 600 s timeout
