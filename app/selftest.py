"""`loradesk self-test`: prove an install (or a PyInstaller bundle) really works, headless.

For each available engine: build a tiny random model, add two tiny adapters, generate with each and
with none, switch back and forth, and check that each adapter changes the answer and that switching
back reproduces it token for token. Exits 0 only when all of it worked. MLX is exercised, not just
imported: a bundle missing MLX's compiled kernels fails here.
"""
from __future__ import annotations

import importlib.util
import sys
import tempfile
import time
from pathlib import Path

from app.tasks import GenerationSettings, get_task


def _available_engines() -> list[str]:
    out = []
    if importlib.util.find_spec("mlx") and importlib.util.find_spec("mlx_lm"):
        out.append("mlx")
    if importlib.util.find_spec("torch") and importlib.util.find_spec("peft"):
        out.append("torch")
    return out


def check_engine(kind: str, root: Path, log) -> None:
    from app.engine import create_engine
    from app.tiny import build_tiny_model, write_random_adapter

    model = build_tiny_model(root / "model", "qwen2")
    adapters = {n: write_random_adapter(model, root / n, seed=s) for n, s in (("math", 21), ("code", 22))}
    eng = create_engine(kind)
    eng.load(model)
    for name, folder in adapters.items():
        eng.add_adapter(name, folder)
    msgs = get_task("math").messages("What is 6 times 7?")
    settings = GenerationSettings(max_tokens=12)
    outs = {}
    for name in (None, "math", "code"):
        eng.activate(name)
        outs[name] = eng.generate(msgs, settings)
        log(f"  {kind}: adapter {name or 'none':5} -> {outs[name]!r}")
    if len(set(outs.values())) != 3:
        raise AssertionError(f"{kind}: adapters did not change the output: {outs}")
    for name in ("math", None, "code", "math"):
        eng.activate(name)
        again = eng.generate(msgs, settings)
        if again != outs[name]:
            raise AssertionError(f"{kind}: switching back to {name} gave {again!r}, first {outs[name]!r}")
    t0 = time.perf_counter()
    for i in range(200):
        eng.activate(("math", "code", None)[i % 3])
    log(f"  {kind}: 200 switches in {(time.perf_counter() - t0) * 1000:.2f} ms")


def check_gui(log) -> None:
    """Qt loads its platform plugin and the main window opens (use QT_QPA_PLATFORM=offscreen)."""
    from app.ui.app import smoke_test  # noqa: PLC0415 - optional part

    smoke_test()
    log("  gui: main window opened")


def run(engines: list[str] | None = None, gui: bool = False, log=print) -> bool:
    engines = engines or _available_engines()
    if not engines:
        log("self-test: no engine is installed (need mlx + mlx-lm, or torch + transformers + peft)")
        return False
    ok = True
    for kind in engines:
        with tempfile.TemporaryDirectory(prefix="loradesk-selftest-") as tmp:
            try:
                check_engine(kind, Path(tmp), log)
                log(f"self-test {kind}: ok")
            except Exception as e:  # noqa: BLE001 - report every failure, then exit non-zero
                ok = False
                log(f"self-test {kind}: FAILED: {type(e).__name__}: {e}")
    if gui:
        try:
            check_gui(log)
        except Exception as e:  # noqa: BLE001
            ok = False
            log(f"self-test gui: FAILED: {type(e).__name__}: {e}")
    log("self-test: " + ("passed" if ok else "FAILED"))
    return ok


def register(sub, common):
    p = sub.add_parser("self-test", help="build a tiny model and adapters, generate and switch; exit 0 if all works")
    p.add_argument("--engine", choices=("mlx", "torch"), action="append",
                   help="engine to test (repeatable; default: every installed engine)")
    p.add_argument("--gui", action="store_true", help="also open the main window (set QT_QPA_PLATFORM=offscreen)")
    p.set_defaults(func=lambda args: 0 if run(args.engine, args.gui) else 1)
