"""`loradesk bench speed`: the hot-swap claims, measured side by side in one run.

- adapter switch time p50 / p99 over N switches (target p50 <= 1 ms);
- decode tokens/s with an adapter active / without (target >= 0.90);
- this engine / the raw library on the same model, prompt and adapter (MLX: >= 0.97);
- resident memory with all adapters - base memory, / the adapters' bytes on disk (target <= 1.05).
The engine-specific reference lives in app/engine/<kind>_bench.py (this module imports no mlx/torch).
"""
from __future__ import annotations

import importlib
import inspect
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from app.engine import create_engine
from app.engine.store import adapter_folder
from app.session import choose_engine, choose_model
from app.tasks import GenerationSettings, get_task, task_names

TARGETS = {  # key: (comparison, target)
    "switch_p50_ms": ("<=", 1.0),
    "adapter_decode_ratio": (">=", 0.90),
    "engine_vs_mlx_lm_ratio": (">=", 0.97),
    "adapter_memory_ratio": ("<=", 1.05),
}


def _percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).glob("*.safetensors"))


def _adapters_for(model_path: Path, tmp: Path, rank: int, log) -> tuple[dict[str, Path], str]:
    """Trained adapters from the store when every task has one, else random rank-`rank` adapters
    on all attention and MLP projections (non-zero, so they cost what real ones cost)."""
    from app.tiny import write_random_adapter

    found = {}
    for task in task_names():
        try:
            folder = adapter_folder(task)
        except Exception:  # noqa: BLE001 - a missing/offline source just means "use random"
            folder = None
        if folder is not None:
            found[task] = folder
    if len(found) == len(task_names()):
        return found, "trained (from the adapter store)"
    log(f"making random rank-{rank} adapters for {', '.join(task_names())} ...")
    return ({task: write_random_adapter(model_path, tmp / task, seed=i + 1, rank=rank, scale=1.0)
             for i, task in enumerate(task_names())}, f"random rank-{rank}, all attention+MLP projections")


def run_speed(model: str | None = None, engine: str | None = None, max_tokens: int = 32, switches: int = 1000,
              rank: int = 16, rounds: int = 3, log=lambda s: print(s, file=sys.stderr)) -> dict:
    kind = choose_engine(engine)
    ref = choose_model(model, kind)
    eng = create_engine(kind)
    log(f"loading {ref} on {kind} ...")
    info = eng.load(ref)
    task = get_task("summarize")
    messages = task.messages(task.example_input)
    # Greedy, no stop strings; EOS may still end early, so tokens/s (not time) is compared.
    settings = GenerationSettings(max_tokens=max_tokens)

    def decode_tps() -> float:
        last = None
        for last in eng.stream_generate(messages, settings):
            pass
        return last.generation_tps

    decode_tps()  # warm-up: first-call compilation and allocation
    base_mem = eng.memory_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        folders, source = _adapters_for(info.path, Path(tmp), rank, log)
        for name, folder in folders.items():
            eng.add_adapter(name, folder)
        adapters_mem = eng.memory_bytes() - base_mem
        disk = sum(_folder_bytes(f) for f in folders.values())
        names = list(folders)

        times = []
        for i in range(switches):
            target = names[i % len(names)]
            t0 = time.perf_counter_ns()
            eng.activate(target)
            times.append((time.perf_counter_ns() - t0) / 1e6)

        log(f"decoding {max_tokens} tokens x {rounds} rounds, base and adapter interleaved ...")
        base_tps, adapter_tps = [], []
        for _ in range(rounds):
            eng.activate(None)
            base_tps.append(decode_tps())
            eng.activate(names[0])
            adapter_tps.append(decode_tps())

        result = {
            "engine": kind,
            "model": ref,
            "quantization": info.quantization,
            "adapters": source,
            "adapter_count": len(names),
            "switches": switches,
            "switch_p50_ms": round(statistics.median(times), 5),
            "switch_p99_ms": round(_percentile(times, 0.99), 5),
            "base_decode_tps": round(statistics.median(base_tps), 3),
            "adapter_decode_tps": round(statistics.median(adapter_tps), 3),
            "adapter_decode_ratio": round(statistics.median(adapter_tps) / statistics.median(base_tps), 4),
            "adapter_resident_bytes": adapters_mem,
            "adapter_disk_bytes": disk,
            "adapter_memory_ratio": round(adapters_mem / disk, 4) if disk else None,
            "max_tokens": max_tokens,
            "rounds": rounds,
        }
        try:
            bench = importlib.import_module(f"app.engine.{kind}_bench")
        except ModuleNotFoundError:
            bench = None
        if bench is not None:
            eng.activate(names[0])
            kwargs = dict(model_path=info.path, adapter_folders={names[0]: folders[names[0]], **folders},
                          tokens=eng.encode(eng.chat_prompt(messages)), prompt=eng.chat_prompt(messages),
                          max_tokens=max_tokens, engine_decode=decode_tps, rounds=rounds, engine=eng)
            accepted = inspect.signature(bench.reference).parameters
            log("measuring the reference library on the same model ...")
            result.update(bench.reference(**{k: v for k, v in kwargs.items() if k in accepted}))
    return result


def format_result(r: dict) -> str:
    lines = [f"engine {r['engine']} | model {r['model']} ({r.get('quantization') or 'unquantized'}) | "
             f"adapters: {r['adapter_count']} {r['adapters']}"]
    for key, value in r.items():
        if key in ("engine", "model", "quantization", "adapters"):
            continue
        mark = ""
        if key in TARGETS and isinstance(value, (int, float)):
            op, target = TARGETS[key]
            ok = value <= target if op == "<=" else value >= target
            mark = f"   target {op} {target}: {'met' if ok else 'MISSED'}"
        lines.append(f"  {key:32} {value}{mark}")
    return "\n".join(lines)


def register_speed(bench_sub, common) -> None:
    p = bench_sub.add_parser("speed", parents=[common], help="adapter switch time, decode ratios, adapter memory")
    p.add_argument("--max-tokens", type=int, default=32, help="tokens per decode run (default 32)")
    p.add_argument("--switches", type=int, default=1000)
    p.add_argument("--rank", type=int, default=16, help="rank of the random adapters (when none are trained)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved decode runs per configuration")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_speed)


def _cmd_speed(args) -> int:
    r = run_speed(args.model, args.engine, args.max_tokens, args.switches, args.rank, args.rounds)
    print(json.dumps(r, indent=2) if args.json else format_result(r))
    return 0
