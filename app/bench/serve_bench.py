"""`loradesk bench serve`: the API server's latency and throughput under concurrent clients.

Starts the server in-process on a free 127.0.0.1 port over one engine and drives it with the real
`openai` client (streamed chat, greedy): 1, 4 and 8 concurrent clients, every request on the same
adapter vs alternating between two. Per scenario: p50/p99 request latency, p50 time to first
token, and tokens/s summed over all clients (completion tokens from the server's `usage` / wall time).

On an engine that batches (llama.cpp), the same run then turns batching off (one answer at a time,
as the server ran before) and measures the most clients again: `sequential_tok_s`. It also times
the first token after switching back to an adapter whose prompt is cached, against no switch. The
ratios the targets are about are computed here, from rows measured side by side in this run.
"""
from __future__ import annotations

import json
import statistics
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

    from app.engine.rates import percentile  # the one percentile rule of the benchmarks

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
            "errors": errors, "p50_s": round(percentile(lat, 0.5), 3) if lat else None,
            "p99_s": round(percentile(lat, 0.99), 3) if lat else None,
            "p50_ttft_s": round(percentile([r["ttft"] for r in results], 0.5), 3) if lat else None,
            "tokens": sum(r["tokens"] for r in results), "wall_s": round(wall, 2),
            "tok_s": round(sum(r["tokens"] for r in results) / wall, 2)}


def _switch_back_ttft(url: str, text: str, max_tokens: int, rounds: int = 6) -> dict:
    """Median first-token time of a request right after one under the same adapter (no switch) and
    right after one under the other adapter (a switch back to a cached prompt), one client."""
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key="bench", max_retries=0, timeout=600)
    same, back = [], []
    for _ in range(rounds):
        _one_request(client, ADAPTERS[0], text, max_tokens)
        same.append(_one_request(client, ADAPTERS[0], text, max_tokens)["ttft"])
        _one_request(client, ADAPTERS[1], text, max_tokens)
        back.append(_one_request(client, ADAPTERS[0], text, max_tokens)["ttft"])
    no_switch, switched = round(statistics.median(same), 4), round(statistics.median(back), 4)
    return {"no_switch_s": no_switch, "switch_back_s": switched, "ratio": round(switched / max(no_switch, 1e-9), 2)}


def _ratios(rows: list[dict], sequential_tok_s: float | None, ttft: dict) -> dict:
    """The issue's target ratios, from rows of this run (None when a row is missing)."""
    def row(clients, adapters):
        return next((r for r in rows if r["clients"] == clients and r["adapters"] == adapters), None)

    def div(a, b):
        return round(a / b, 2) if a is not None and b else None

    one, alt1 = row(1, "same"), row(1, "alternating")
    most = max(r["clients"] for r in rows)
    four, alt_most = row(4, "same"), row(most, "alternating")
    return {
        "alternating_vs_same_1_client_tok_s": div(alt1 and alt1["tok_s"], one and one["tok_s"]),
        "same_4_clients_vs_1_client_tok_s": div(four and four["tok_s"], one and one["tok_s"]),
        f"alternating_{most}_clients_vs_1_client_p50": div(alt_most and alt_most["p50_s"], one and one["p50_s"]),
        "switch_back_vs_no_switch_ttft": ttft["ratio"],
        f"same_{most}_clients_batched_vs_sequential_tok_s": div(row(most, "same")["tok_s"], sequential_tok_s),
    }


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
        for alternate in (False, True):  # each adapter's prompt read once: the rows compare steady states
            _scenario(server.url, 2, 1, alternate, text, max_tokens)
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
        log("first token after switching back to a cached adapter ...")
        ttft = _switch_back_ttft(server.url, text, max_tokens)
        sequential, batched = [], eng.max_batch
        if batched > 1:
            eng.batch.max_batch = 1  # batching off: the server runs one answer at a time again
            try:
                for alternate in (False, True):
                    log(f"{max(clients)} client(s), {'alternating' if alternate else 'same'} adapter, batching off ...")
                    sequential.append(_scenario(server.url, max(clients), requests, alternate, text, max_tokens))
            finally:
                eng.batch.max_batch = batched
    finally:
        server.stop()
        executor.close()
    sequential_tok_s = sequential[0]["tok_s"] if sequential else None
    return {"engine": kind, "model": str(ref), "adapters": source, "max_tokens": max_tokens,
            "requests_per_client": requests, "max_batch": batched, "scheduling": eng.scheduling(),
            "engine_alone": direct, "rows": rows, "sequential_tok_s": sequential_tok_s, "sequential": sequential,
            "switch_back_ttft": ttft, "ratios": _ratios(rows, sequential_tok_s, ttft)}


def format_result(r: dict) -> str:
    lines = [f"bench serve: {r['model']} ({r['engine']}), adapters {', '.join(ADAPTERS)}: {r['adapters']}; "
             f"greedy, max_tokens {r['max_tokens']}, {r['requests_per_client']} streamed requests per client",
             f"engine alone (no server), 1 request: {r['engine_alone']['latency_s']:.2f} s, "
             f"{r['engine_alone']['tokens_per_s']:.1f} tok/s", f"answers: {r['scheduling']}", "",
             "| clients | adapters | batching | requests | p50 latency s | p99 latency s | p50 first token s | tokens/s |",
             "|---|---|---|---|---|---|---|---|"]
    for s, mode in [(s, "on" if r["max_batch"] > 1 else "-") for s in r["rows"]] + [(s, "off") for s in r["sequential"]]:
        lines.append(f"| {s['clients']} | {s['adapters']} | {mode} | {s['requests']} | {s['p50_s']} | "
                     f"{s['p99_s']} | {s['p50_ttft_s']} | {s['tok_s']} |")
        lines += [f"  error: {e}" for e in s["errors"]]
    t = r["switch_back_ttft"]
    lines += ["", f"first token, 1 client: {t['no_switch_s']} s without a switch, {t['switch_back_s']} s after "
                  f"switching back to a cached adapter ({t['ratio']}x)", "ratios (this run):"]
    lines += [f"  {k}: {v}" for k, v in r["ratios"].items()]
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
