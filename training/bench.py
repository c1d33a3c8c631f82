"""`loradesk bench-train`: training throughput of `loradesk train` against raw `mlx_lm lora --train`,
on the same model, examples and settings, measured side by side in one run.

Both run as subprocesses (this module imports neither mlx nor torch), alternating raw / ours for
`--repeats` rounds. Both count tokens the way mlx-lm does (tokens that carry loss) and exclude
validation time. Throughput is the mean over 10-step windows after the first window (which holds
compilation): raw mlx-lm prints one tokens/s figure per 10-step window; ours are the same windows
summed from the per-step figures in the adapter's loradesk.json. Those figures leave out what
happens between steps (reports, callbacks), so a second ratio uses wall-clock time from the end
of the first window to the last step (validation and reporting included): raw mlx-lm's report lines
are timestamped as they arrive; ours come from the per-step wall times in loradesk.json.
"""
from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WINDOW = 10
VALID = 0.1  # of 64 rows: 6 validation examples, more than a batch (mlx-lm needs one full batch)
TARGET = 0.95
TORCH_TARGET = 1.5  # the product's torch trainer against a plain transformers + PEFT loop
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_RAW_LINE = re.compile(r"^\s*(\d+)\s+([\d.]+)\s+[▼▲]\s+([\d,]+)\s+([\d.]+)k\s*$")


def register(sub, common):
    b = sub.add_parser("bench-train", help="training tokens/s: loradesk train vs raw mlx_lm lora, one run")
    b.add_argument("--model", help="an MLX-loadable model folder (default: a random Qwen2-architecture "
                                   "model built here, 4-bit)")
    b.add_argument("--hidden", type=int, default=128, help="hidden size of the built model (default 128)")
    b.add_argument("--layers", type=int, default=2, help="layers of the built model (default 2)")
    b.add_argument("--no-quantize", action="store_true", help="keep the built model in float32 (LoRA, not QLoRA)")
    b.add_argument("--iters", type=int, default=40)
    b.add_argument("--batch-size", type=int, default=4)
    b.add_argument("--rank", type=int, default=8)
    b.add_argument("--repeats", type=int, default=2, help="alternating raw/ours rounds (default 2)")
    b.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    b.add_argument("--engine", choices=("mlx", "torch"), default="mlx",
                   help="mlx: against raw `mlx_lm lora`; torch: against a plain transformers + PEFT loop")
    b.add_argument("--data", help="torch: a GSM8K-schema jsonl file or folder to train on (default: synthetic rows)")
    b.add_argument("--max-seq-length", type=int, default=512)
    b.set_defaults(func=cmd_bench_train)


def synthetic_gsm8k(n: int = 64) -> list[dict]:
    """GSM8K-schema rows (question, answer with <<a=b>> and '#### N'): offline, any length."""
    rows = []
    for i in range(n):
        a, b, c = 3 + i, 7 + 2 * i, 2 + i % 5
        rows.append({"question": f"Tom has {a} boxes with {b} pencils each. He gives away {c} boxes. "
                                 f"How many pencils does he keep?",
                     "answer": f"He keeps {a} - {c} = <<{a}-{c}={a - c}>>{a - c} boxes.\n"
                               f"That is {a - c} * {b} = <<{a - c}*{b}={(a - c) * b}>>{(a - c) * b} pencils.\n"
                               f"#### {(a - c) * b}"})
    return rows


def build_model(root: Path, hidden: int, layers: int, quantize: bool) -> Path:
    from app.tiny import build_tiny_model

    hf = build_tiny_model(root / "model-hf", "qwen2", seed=1, hidden=hidden, layers=layers)
    if not quantize:
        return hf
    out = root / "model-4bit"
    subprocess.run([sys.executable, "-m", "mlx_lm", "convert", "--hf-path", str(hf), "--mlx-path", str(out),
                    "-q", "--q-bits", "4", "--q-group-size", "64"], check=True, capture_output=True)
    return out


def write_data(root: Path, rows: list[dict], model: Path, config) -> tuple[Path, Path, int]:
    """The GSM8K file for `loradesk train`, and the same prepared chats as mlx-lm's {train,valid}.jsonl."""
    from app.tasks import get_task
    from training.data import TokenCounter, prepare

    src = root / "gsm8k"
    src.mkdir()
    (src / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    prepared = prepare(config.replace(data=(str(src),)),
                       TokenCounter(tokenizer_json=model / "tokenizer.json"))
    task = get_task("math")
    raw = root / "raw-data"
    raw.mkdir()
    for name, part in (("train", prepared.train), ("valid", prepared.valid)):
        (raw / f"{name}.jsonl").write_text("".join(json.dumps({"messages": e.messages(task)}) + "\n" for e in part))
    return src, raw, len(prepared.train)


def window_means(points: list[tuple[int, float]]) -> float:
    """Mean of per-window tokens/s after the first window; points are (last step, tokens/s)."""
    later = [tps for step, tps in points if step > WINDOW]
    if not later:
        raise RuntimeError("the run was too short to measure (needs more than one 10-step window)")
    return statistics.fmean(later)


def run_raw(model: Path, data: Path, out: Path, a) -> tuple[float, float, float]:
    cfg = out.with_suffix(".yaml")
    cfg.write_text(f"lora_parameters: {{rank: {a.rank}, scale: 2.0, dropout: 0.0}}\n")
    cmd = [sys.executable, "-m", "mlx_lm", "lora", "--train", "--model", str(model), "--data", str(data),
           "--iters", str(a.iters), "--batch-size", str(a.batch_size), "--num-layers", "-1",
           "--learning-rate", "1e-4", "--mask-prompt", "--steps-per-report", str(WINDOW),
           "--steps-per-eval", str(10 * a.iters), "--val-batches", "1", "--save-every", str(10 * a.iters),
           "--max-seq-length", "512", "--seed", "0", "--adapter-path", str(out), "-c", str(cfg)]
    tic = time.perf_counter()
    # unbuffered, so each report line is timestamped as mlx-lm prints it
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = [(time.perf_counter(), line) for line in proc.stdout]
    err = proc.stderr.read()
    wall = time.perf_counter() - tic
    if proc.wait():
        raise RuntimeError(f"mlx_lm lora failed:\n{err[-2000:]}")
    points, stamps, loss = [], [], None
    for t, line in lines:
        m = _RAW_LINE.match(_ANSI.sub("", line))
        if m:
            points.append((int(m.group(1)), float(m.group(3).replace(",", ""))))
            stamps.append((int(m.group(1)), t, float(m.group(4)) * 1000))
            loss = float(m.group(2))
    (s0, t0, k0), (s1, t1, k1) = stamps[0], stamps[-1]
    return window_means(points), (k1 - k0) / (t1 - t0), wall, loss


def run_ours(model: Path, data: Path, home: Path, a) -> tuple[float, float, float]:
    cmd = [sys.executable, "-m", "app.cli", "train", "--task", "math", "--engine", "mlx", "--model", str(model),
           "--data", str(data), "--iters", str(a.iters), "--batch-size", str(a.batch_size), "--rank", str(a.rank),
           "--alpha", str(2.0 * a.rank), "--dropout", "0", "--learning-rate", "1e-4", "--num-layers", "-1",
           "--eval-every", str(10 * a.iters), "--save-every", str(10 * a.iters), "--max-seq-length", "512",
           "--seed", "0", "--valid-fraction", str(VALID), "--test-fraction", "0", "--no-register"]
    env = {**os.environ, "LORADESK_HOME": str(home)}
    tic = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - tic
    if proc.returncode:
        raise RuntimeError(f"loradesk train failed:\n{proc.stderr[-2000:]}")
    meta = json.loads((Path(proc.stdout.strip().splitlines()[-1]) / "loradesk.json").read_text())
    tokens = secs = 0.0
    points = []
    curve = meta["throughput_curve"]
    for step, n, s, _ in curve:
        tokens, secs = tokens + n, secs + s
        if step % WINDOW == 0:
            points.append((step, tokens / secs))
            tokens = secs = 0.0
    later = [c for c in curve if c[0] > WINDOW]  # wall clock from the first window's end to the last step
    loop_tps = sum(c[1] for c in later) / (later[-1][3] - curve[WINDOW - 1][3])
    last = [v for _, v in meta["loss_curve"][-WINDOW:]]  # mlx-lm prints the mean of its last window
    return window_means(points), loop_tps, wall, statistics.fmean(last)


def cmd_bench_train_torch(args) -> int:
    """The product's torch trainer vs a plain transformers + PEFT loop (training/torch_bench.py)."""
    from app.tasks import get_task
    from training.config import TrainConfig
    from training.data import TokenCounter, prepare

    if args.repeats < 1 or args.iters < args.repeats * 3:
        raise ValueError("--iters must be at least 3 per round (--repeats)")
    with tempfile.TemporaryDirectory(prefix="loradesk-bench-train-") as tmp:
        root = Path(tmp)
        model = Path(args.model) if args.model else None
        if model is None:
            from app.tiny import build_tiny_model

            model = build_tiny_model(root / "model-hf", "qwen2", seed=1, hidden=args.hidden, layers=args.layers)
        data = args.data
        if data is None:
            data = root / "gsm8k"
            data.mkdir()
            (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in synthetic_gsm8k(256)))
        config = TrainConfig.for_task("math", engine="torch", model=str(model), data=(str(data),),
                                      max_seq_length=args.max_seq_length, batch_size=args.batch_size,
                                      rank=args.rank, alpha=2.0 * args.rank, test_fraction=0.0, register=False)
        from training import torch_bench  # torch: loaded only for this engine

        prepared = prepare(config, TokenCounter(tokenizer_json=model / "tokenizer.json"))
        task = get_task("math")
        say = (lambda m: None) if args.json else (lambda m: print(m, flush=True))  # noqa: E731
        result = torch_bench.compare(config, model, [e.messages(task) for e in prepared.train],
                                     [e.messages(task) for e in prepared.valid[:4 * args.batch_size]],
                                     args.iters, args.repeats, say)
        result["model"] = str(args.model or f"random qwen2 hidden {args.hidden} x {args.layers} layers")
        result["target"] = TORCH_TARGET
        if args.json:
            print(json.dumps(result, indent=2))
            return 0
        p, o = result["plain"], result["loradesk"]
        print(f"plain transformers+PEFT loop: {p['tokens_per_s']:.1f} tok/s ({p['loss_tokens']} loss tokens in "
              f"{p['padded_tokens']} padded), loss {p['first_loss']:.3f} -> {p['last10_loss']:.3f} (last 10), "
              f"valid {p['valid_loss']:.3f}")
        print(f"loradesk train loop:          {o['tokens_per_s']:.1f} tok/s ({o['loss_tokens']} loss tokens in "
              f"{o['padded_tokens']} padded), loss {o['first_loss']:.3f} -> {o['last10_loss']:.3f} (last 10), "
              f"valid {o['valid_loss']:.3f}")
        print(f"training tokens/s, loradesk / plain: {result['ratio']:.2f} (target >= {TORCH_TARGET}) "
              f"{'OK' if result['ratio'] >= TORCH_TARGET else 'BELOW TARGET'}")
    return 0


def cmd_bench_train(args) -> int:
    from training.config import TrainConfig

    if args.engine == "torch":
        return cmd_bench_train_torch(args)
    with tempfile.TemporaryDirectory(prefix="loradesk-bench-train-") as tmp:
        root = Path(tmp)
        model = Path(args.model) if args.model else build_model(root, args.hidden, args.layers, not args.no_quantize)
        # every mlx-lm default target for Qwen2 (all linear layers of each block), as raw mlx-lm trains
        config = TrainConfig.for_task("math", max_seq_length=512, valid_fraction=VALID, test_fraction=0.0)
        src, raw_data, n_train = write_data(root, synthetic_gsm8k(), model, config)
        rounds = []
        for r in range(args.repeats):
            raw_tps, raw_loop, raw_wall, raw_loss = run_raw(model, raw_data, root / f"raw-{r}", args)
            ours_tps, ours_loop, ours_wall, ours_loss = run_ours(model, src, root / f"home-{r}", args)
            rounds.append({"raw_tokens_per_s": raw_tps, "loradesk_tokens_per_s": ours_tps, "ratio": ours_tps / raw_tps,
                           "raw_loop_tokens_per_s": raw_loop, "loradesk_loop_tokens_per_s": ours_loop,
                           "loop_ratio": ours_loop / raw_loop, "raw_wall_s": raw_wall, "loradesk_wall_s": ours_wall,
                           "raw_final_loss": raw_loss, "loradesk_final_loss": ours_loss})
            if not args.json:
                print(f"round {r + 1}: raw mlx_lm lora {raw_tps:,.1f} tok/s, loradesk train {ours_tps:,.1f} tok/s "
                      f"-> ratio {ours_tps / raw_tps:.3f}; wall-clock loop {raw_loop:,.1f} vs {ours_loop:,.1f} -> "
                      f"{ours_loop / raw_loop:.3f} (last-window loss {raw_loss:.3f} vs {ours_loss:.3f}; process "
                      f"{raw_wall:.1f}s vs {ours_wall:.1f}s incl. start-up)", flush=True)
        ratio = statistics.median(r["ratio"] for r in rounds)
        loop_ratio = statistics.median(r["loop_ratio"] for r in rounds)
        result = {"model": str(args.model or f"random qwen2 hidden {args.hidden} x {args.layers} layers"
                                            f"{'' if args.no_quantize else ', 4-bit'}"),
                  "iters": args.iters, "batch_size": args.batch_size, "rank": args.rank, "train_examples": n_train,
                  "rounds": rounds, "train_tokens_per_s_ratio": ratio, "loop_tokens_per_s_ratio": loop_ratio,
                  "target": TARGET}
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            print(f"training tokens/s, loradesk train / raw mlx_lm lora: {ratio:.3f} (median of {len(rounds)}; "
                  f"target >= {TARGET}) {'OK' if ratio >= TARGET else 'BELOW TARGET'}; wall-clock loop "
                  f"(reporting and validation included): {loop_ratio:.3f}")
    return 0
