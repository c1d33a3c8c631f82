"""`loradesk bench`: quality (this module) and speed (app/bench/speed.py)."""
from __future__ import annotations
# The app's layers are imported inside the commands: `loradesk --help` imports this module (app/cli.py)
# and would otherwise pay for numpy, the engines and the Hub (python -X importtime -m app --help).

import sys
import threading
from pathlib import Path


def register(sub, common):
    b = sub.add_parser("bench", help="benchmarks: quality (milestone table) and speed")
    bsub = b.add_subparsers(dest="bench_command", metavar="BENCH", required=True)
    try:
        from app.bench.speed import register_speed
    except ImportError:
        register_speed = None
    if register_speed is not None:
        register_speed(bsub, common)
    from app.bench.serve_bench import register_serve

    register_serve(bsub, common)
    from app.bench.route_bench import register_route

    register_route(bsub, common)

    from app.bench.evals import EVALS
    from app.bench.quality import CONFIGS

    q = bsub.add_parser("quality", parents=[common],
                        help="Mistral-7B vs base SLM vs SLM + task adapter on the tasks' benchmarks")
    q.add_argument("--tasks", default=",".join(EVALS), help=f"comma-separated, from: {', '.join(EVALS)}")
    q.add_argument("--configs", default=",".join(CONFIGS),
                   help="comma-separated: mistral-7b, base, adapter, or any model ref (repo id or folder)")
    q.add_argument("--limit", type=int, help="the first N items of each task, in dataset order")
    q.add_argument("--seed", type=int, help="a seeded random subset instead (of size --limit)")
    q.add_argument("--out", default="bench-out", help="folder for results.jsonl and the report (default: bench-out)")
    q.add_argument("--resume", action="store_true", help="keep results.jsonl and skip the items already done")
    q.add_argument("--data-dir", help="read datasets from local jsonl/parquet files in their real schemas")
    q.add_argument("--max-tokens", type=int, help="answer length limit (default: each task record's)")
    q.add_argument("--max-input-tokens", type=int, default=1536, help="cut long articles to this many tokens")
    q.add_argument("--timeout", type=float, default=10.0, help="seconds per HumanEval program in the sandbox")
    q.add_argument("--hellaswag-size", type=int, default=200, help="seeded Hellaswag subset size (default 200)")
    q.add_argument("--together", type=int, default=1,
                   help="answers generated at once, batched where the engine can (llama.cpp, torch); "
                        "0: the engine's batch. Default 1, so speed figures are those of lone answers")
    q.add_argument("--no-progress", action="store_true", help="no progress bar")
    q.set_defaults(func=cmd_quality)

    r = bsub.add_parser("report", help="render the report again from a results folder's results.json")
    r.add_argument("out", help="the folder a quality run wrote")
    r.set_defaults(func=cmd_report)


def _split(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def cmd_quality(args) -> int:
    from app.bench.evals import EvalOptions
    from app.bench.quality import QualityConfig, run_quality
    from app.bench.report import write_report

    opts = EvalOptions(max_input_tokens=args.max_input_tokens, max_tokens=args.max_tokens,
                       humaneval_timeout=args.timeout, hellaswag_size=args.hellaswag_size)
    cfg = QualityConfig(tasks=_split(args.tasks), configs=_split(args.configs), model=args.model,
                        engine=args.engine, limit=args.limit, seed=args.seed, out_dir=Path(args.out),
                        resume=args.resume, data_dir=Path(args.data_dir) if args.data_dir else None, options=opts,
                        together=args.together or None)
    bar = _Bar(disabled=args.no_progress)
    cancel = threading.Event()
    try:
        results = run_quality(cfg, bar.update, cancel)
    except KeyboardInterrupt:
        cancel.set()
        bar.close()
        print(f"\ninterrupted; finished items are in {cfg.out_dir / 'results.jsonl'} (rerun with --resume)",
              file=sys.stderr)
        return 130
    bar.close()
    for s in results["skipped"]:
        print(f"skipped: {s['task']} / {s['config']}: {s['reason']}", file=sys.stderr)
    paths = write_report(results, cfg.out_dir)
    from app.bench.report import milestone_markdown

    print(milestone_markdown(results))
    print(f"\nwall time {results['meta']['wall_seconds']:.0f} s; report: " + ", ".join(str(p) for p in paths.values()))
    return 0


def cmd_report(args) -> int:
    import json

    from app.bench.report import write_report

    f = Path(args.out) / "results.json"
    if not f.exists():
        raise ValueError(f"{f} not found; run `loradesk bench quality --out {args.out}` first")
    paths = write_report(json.loads(f.read_text()), Path(args.out))
    print("report: " + ", ".join(str(p) for p in paths.values()))
    return 0


class _Bar:
    """A tqdm bar per task x configuration: items done, ETA, running score."""

    def __init__(self, disabled: bool = False):
        self.disabled, self.bar, self.key = disabled, None, None

    def update(self, p) -> None:
        if self.disabled:
            if p.done == p.total and p.total:
                print(f"{p.task} / {p.config}: {p.done}/{p.total} {p.metric}={_fmt(p.score)}", file=sys.stderr)
            return
        from tqdm import tqdm

        if self.key != (p.task, p.config):
            self.close()
            self.key = (p.task, p.config)
            self.bar = tqdm(total=p.total, initial=p.done, desc=f"{p.task} / {p.config}", unit="item",
                            file=sys.stderr, dynamic_ncols=True)
        self.bar.n = p.done
        self.bar.set_postfix_str(f"{p.metric}={_fmt(p.score)}", refresh=False)
        self.bar.refresh()

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}" if v <= 1 else f"{v:.1f}"
