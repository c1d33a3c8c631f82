"""`loradesk bench route`: the Auto router's accuracy and confusion matrix on its held-out set, and
its time per prompt beside the answer's time to first token on the loaded engine (same prompts)."""
from __future__ import annotations

import json
import random
import statistics
import sys
import time

from app.router import HELDOUT, accuracy, default_router, heldout
from app.session import open_session
from app.tasks import GenerationSettings


def time_route(router, prompts: list[str], repeat: int = 5) -> list[float]:
    """Seconds per routing decision for each prompt (the best of `repeat`: the router's own cost)."""
    out = []
    for p in prompts:
        best = float("inf")
        for _ in range(repeat):
            t = time.perf_counter()
            router.route(p)
            best = min(best, time.perf_counter() - t)
        out.append(best)
    return out


def sample(items: list[dict], n: int, seed: int = 0) -> list[dict]:
    """n items spread over the labels (seeded), for the time-to-first-token runs."""
    rng = random.Random(seed)
    by: dict[str, list[dict]] = {}
    for it in items:
        by.setdefault(it["task"], []).append(it)
    picked, labels = [], sorted(by)
    pools = {k: rng.sample(v, len(v)) for k, v in by.items()}
    while len(picked) < min(n, len(items)):
        for k in labels:
            if pools[k] and len(picked) < n:
                picked.append(pools[k].pop())
    return picked


def time_to_first_token(engine, items: list[dict], log=lambda s: None) -> list[dict]:
    """Route each prompt, activate its adapter and time the answer's first token (one token asked)."""
    from app.plan import for_route  # late: 5 ms of `loradesk --help`, which imports every command's module

    router = default_router()
    rows = []
    router.route("warm up")
    engine.generate("Hello", GenerationSettings(max_tokens=1))  # first-call allocation outside the figures
    for i, it in enumerate(items):
        t = time.perf_counter()
        r = router.route(it["prompt"])
        routed = time.perf_counter() - t
        adapter, messages, settings = for_route(r, it["prompt"], engine)
        engine.activate(adapter)
        last = None
        for last in engine.stream_generate(messages, settings.replace(max_tokens=1)):
            pass
        rows.append({"task": it["task"], "routed": r.task, "route_s": routed,
                     "ttft_s": last.time_to_first_token if last else 0.0,
                     "prompt_tokens": last.prompt_tokens if last else 0})
        log(f"  {i + 1}/{len(items)} {it['task']:>10} -> {r.task:10} route {routed * 1e3:.2f} ms, "
            f"first token {rows[-1]['ttft_s']:.2f} s ({rows[-1]['prompt_tokens']} tokens)")
    return rows


def run(model=None, engine=None, prompts: int = 20, ttft: bool = True, path=HELDOUT,
        log=lambda s: print(s, file=sys.stderr)) -> dict:
    router = default_router()
    items = heldout(path)
    acc, confusion, labels = accuracy(router, items)
    wrong = [{"prompt": it["prompt"][:120], "task": it["task"], "routed": router.route(it["prompt"]).task}
             for it in items if router.route(it["prompt"]).task != it["task"]]
    times = time_route(router, [it["prompt"] for it in items])
    # A 200-token prompt (about 150 words), the brief's yardstick.
    long = " ".join(["the committee reviewed the budget and the plan for the new library in the town centre"] * 10)
    out = {"heldout": str(path), "items": len(items), "accuracy": acc, "labels": labels,
           "confusion": confusion.tolist(), "wrong": wrong,
           "route_ms_median": statistics.median(times) * 1e3, "route_ms_max": max(times) * 1e3,
           "route_ms_200_tokens": min(time_route(router, [long], 20)) * 1e3}
    if ttft:
        session = open_session(model, engine, warn=False)
        eng = session.engine
        log(f"time to first token on {eng.kind} ({eng.model_info.ref}), {prompts} held-out prompts ...")
        rows = time_to_first_token(eng, sample(items, prompts), log)
        ratio = [r["route_s"] / r["ttft_s"] for r in rows if r["ttft_s"] > 0]
        out.update(engine=eng.kind, model=str(eng.model_info.ref), adapters=sorted(eng.adapters), ttft_runs=rows,
                   ttft_s_median=statistics.median(r["ttft_s"] for r in rows),
                   route_ms_median_same_prompts=statistics.median(r["route_s"] for r in rows) * 1e3,
                   route_share_of_ttft_median=statistics.median(ratio) if ratio else None,
                   route_share_of_ttft_max=max(ratio) if ratio else None)
    return out


def format_result(r: dict) -> str:
    labels = r["labels"]
    lines = [f"held-out: {r['items']} prompts ({r['heldout']})", f"accuracy: {r['accuracy']:.1%}", "",
             "confusion (rows: true task, columns: routed)",
             " " * 12 + "".join(f"{lab[:10]:>11}" for lab in labels)]
    for lab, row in zip(labels, r["confusion"]):
        lines.append(f"{lab:12}" + "".join(f"{x:11d}" for x in row))
    lines += ["", f"router: {r['route_ms_median']:.2f} ms per prompt (median; max {r['route_ms_max']:.2f} ms), "
              f"{r['route_ms_200_tokens']:.2f} ms for a 200-token prompt (CPU, numpy)"]
    if "ttft_s_median" in r:
        lines.append(f"answer: first token {r['ttft_s_median'] * 1e3:.0f} ms (median, {len(r['ttft_runs'])} prompts, "
                     f"{r['engine']} {r['model']}; adapters loaded: {', '.join(r['adapters']) or 'none'})")
        lines.append(f"router / first token: {r['route_share_of_ttft_median']:.2%} median, "
                     f"{r['route_share_of_ttft_max']:.2%} at most")
    for w in r["wrong"][:20]:
        lines.append(f"  wrong: {w['task']} -> {w['routed']}: {w['prompt']!r}")
    return "\n".join(lines)


def register_route(bench_sub, common) -> None:
    p = bench_sub.add_parser("route", parents=[common],
                             help="Auto router: held-out accuracy, confusion, time per prompt vs time to first token")
    p.add_argument("--prompts", type=int, default=20, help="held-out prompts timed on the engine (default 20)")
    p.add_argument("--no-ttft", action="store_true", help="accuracy and router time only: load no model")
    p.add_argument("--heldout", default=str(HELDOUT), help="a jsonl file of {prompt, task} lines")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_route)


def _cmd_route(args) -> int:
    r = run(args.model, args.engine, args.prompts, not args.no_ttft, args.heldout)
    print(json.dumps(r, indent=2) if args.json else format_result(r))
    return 0
