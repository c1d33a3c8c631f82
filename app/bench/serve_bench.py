"""`loradesk bench serve`: the API server's latency and throughput under concurrent clients.

Starts the server in-process on a free 127.0.0.1 port over one engine and drives it with the real
`openai` client (streamed chat, greedy): 1, 4 and 8 concurrent clients, every request on the same
adapter vs alternating between two. Per scenario: p50/p99 request latency, p50 time to first
token, and tokens/s summed over all clients (completion tokens from the server's `usage` / wall time).
"""
from __future__ import annotations

import json
import sys
import tempfile
import threading
import time
from pathlib import Path

from app.tasks import get_task

ADAPTERS = ("math", "code")  # the two task models the alternating runs switch between


def _one_request(client, model: str, text: str, max_tokens: int) -> dict:
    start = time.perf_counter()
    first, tokens = None, 0
    stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}],
                                            max_tokens=max_tokens, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content and first is None:
            first = time.perf_counter() - start
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return {"latency": time.perf_counter() - start, "ttft": first or 0.0, "tokens": tokens}


def _scenario(url: str, clients: int, requests: int, alternate: bool, text: str, max_tokens: int) -> dict:
    import openai

    from app.engine.base import percentile  # the one percentile rule of the benchmarks

    results, errors = [], []

    def client_loop(i: int) -> None:
        client = openai.OpenAI(base_url=url + "/v1", api_key="bench", max_retries=0, timeout=600)
        try:
            for k in range(requests):
                model = ADAPTERS[(i + k) % 2] if alternate else ADAPTERS[0]
                results.append(_one_request(client, model, text, max_tokens))
        except Exception as e:  # noqa: BLE001 - reported in the result
            errors.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    lat = [r["latency"] for r in results]
    return {"clients": clients, "adapters": "alternating" if alternate else "same", "requests": len(results),
            "errors": errors, "latency_p50_s": round(percentile(lat, 0.5), 3) if lat else None,
            "latency_p99_s": round(percentile(lat, 0.99), 3) if lat else None,
            "ttft_p50_s": round(percentile([r["ttft"] for r in results], 0.5), 3) if lat else None,
            "tokens": sum(r["tokens"] for r in results), "wall_s": round(wall, 2),
            "tokens_per_s": round(sum(r["tokens"] for r in results) / wall, 2)}


def run_serve_bench(model: str | None = None, engine: str | None = None, clients=(1, 4, 8), requests: int = 2,
                    max_tokens: int = 16, rank: int = 16, log=lambda s: print(s, file=sys.stderr)) -> dict:
    from app.bench.speed import _adapters_for
    from app.session import new_engine
    from app.serve.api import Backend, ServeConfig, create_app
    from app.serve.queue import SerialExecutor
    from app.serve.runner import BackgroundServer
    from app.session import choose_engine, choose_model

    kind = choose_engine(engine)
    ref = choose_model(model, kind)
    eng = new_engine(kind)
    log(f"loading {ref} on {kind} ...")
    info = eng.load(ref)
    with tempfile.TemporaryDirectory(prefix="loradesk-bench-serve-") as tmp:
        folders, source = _adapters_for(eng, Path(tmp), rank, log)
        for task in ADAPTERS:
            eng.add_adapter(task, folders[task])
    text = get_task("math").example_input
    executor = SerialExecutor()
    server = BackgroundServer(create_app(Backend(lambda: eng, executor),
                                         ServeConfig(port=0, max_pending=max(clients) + 1)))
    try:
        log(f"serving on {server.url}; warming up ...")
        _scenario(server.url, 1, 1, False, text, max_tokens)
        # The engine alone, same request, for the server's overhead at one client.
        task = get_task(ADAPTERS[0])
        eng.activate(ADAPTERS[0])
        t0, last = time.perf_counter(), None
        for last in eng.stream_generate(task.messages(text), task.generation.replace(max_tokens=max_tokens)):
            pass
        seconds = time.perf_counter() - t0
        eng.activate(None)
        direct = {"latency_s": round(seconds, 3), "tokens": last.generation_tokens,
                  "tokens_per_s": round(last.generation_tokens / seconds, 2)}
        rows = []
        for n in clients:
            for alternate in (False, True):
                log(f"{n} client(s), {'alternating' if alternate else 'same'} adapter ...")
                rows.append(_scenario(server.url, n, requests, alternate, text, max_tokens))
    finally:
        server.stop()
        executor.close()
    return {"engine": kind, "model": str(ref), "adapters": source, "max_tokens": max_tokens,
            "requests_per_client": requests, "engine_alone": direct, "scenarios": rows}


def format_result(r: dict) -> str:
    lines = [f"bench serve: {r['model']} ({r['engine']}), adapters {', '.join(ADAPTERS)}: {r['adapters']}; "
             f"greedy, max_tokens {r['max_tokens']}, {r['requests_per_client']} streamed requests per client",
             f"engine alone (no server), 1 request: {r['engine_alone']['latency_s']:.2f} s, "
             f"{r['engine_alone']['tokens_per_s']:.1f} tok/s", "",
             "| clients | adapters | requests | p50 latency s | p99 latency s | p50 first token s | tokens/s |",
             "|---|---|---|---|---|---|---|"]
    for s in r["scenarios"]:
        lines.append(f"| {s['clients']} | {s['adapters']} | {s['requests']} | {s['latency_p50_s']} | "
                     f"{s['latency_p99_s']} | {s['ttft_p50_s']} | {s['tokens_per_s']} |")
        lines += [f"  error: {e}" for e in s["errors"]]
    return "\n".join(lines)


def register_serve(bench_sub, common) -> None:
    p = bench_sub.add_parser("serve", parents=[common],
                             help="the API server: p50/p99 latency and tokens/s for 1, 4, 8 concurrent clients")
    p.add_argument("--clients", default="1,4,8", help="comma-separated client counts (default 1,4,8)")
    p.add_argument("--requests", type=int, default=2, help="requests per client per scenario (default 2)")
    p.add_argument("--max-tokens", type=int, default=16, help="tokens per answer (default 16)")
    p.add_argument("--rank", type=int, default=16, help="rank of the random adapters (when none are trained)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_serve_bench)


def _cmd_serve_bench(args) -> int:
    try:
        clients = tuple(int(c) for c in args.clients.split(",") if c.strip())
    except ValueError:
        raise ValueError(f"--clients takes comma-separated numbers, got {args.clients!r}") from None
    if not clients or min(clients) < 1 or args.requests < 1:
        raise ValueError("--clients and --requests must be at least 1")
    r = run_serve_bench(args.model, args.engine, clients, args.requests, args.max_tokens, args.rank)
    print(json.dumps(r, indent=2) if args.json else format_result(r))
    return 0
