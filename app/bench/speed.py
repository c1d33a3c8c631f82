"""`loradesk bench speed`: the hot-swap claims, measured side by side in one run.

- adapter switch time p50 / p99 over N switches (target p50 <= 1 ms);
- decode tokens/s, each as a ratio to the base with no adapter loaded (a second engine on the same
  model that never loads one, interleaved round by round with the others, so drift in the machine's
  speed hits all alike): adapters resident and none active (>= 0.98), an adapter active (torch,
  MLX >= 0.90; llama.cpp >= 0.90), and on llama.cpp the adapter's merged copy (>= 0.97), with the
  merge's time and memory and how its next-token logits and greedy answers compare with the LoRA's;
- this engine / the raw library on the same model, prompt and adapter (>= 0.97);
- the process's resident memory with all adapters minus before them, / their bytes on disk (<= 1.05);
- with `--vs ENGINE=MODEL`, another engine's base decode on the same prompt, interleaved in the same
  run (llama.cpp's target: >= 2x the torch engine's).
Decode tokens/s is one rule everywhere (rates.decode_tps): the steps after the first token over
their own time. The engine-specific reference lives in app/engine/<kind>_bench.py (this module
imports no engine library).
"""
from __future__ import annotations

import gc
import importlib
import inspect
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from app.engine.rates import decode_tps, percentile
from app.store import adapter_folder
from app.session import choose_engine, choose_model, new_engine
from app.tasks import GenerationSettings, get_task, task_names

TARGETS = {  # key: (comparison, target, engines it applies to or None for all)
    "switch_p50_ms": ("<=", 1.0, None),
    "adapter_decode_ratio": (">=", 0.90, ("mlx", "torch")),
    "engine_vs_reference_ratio": (">=", 0.97, None),
    "adapter_memory_ratio": ("<=", 1.05, None),
    "base_decode_vs_torch_ratio": (">=", 2.0, ("llamacpp",)),
    "resident_decode_ratio": (">=", 0.98, None),
    "merged_decode_ratio": (">=", 0.97, ("llamacpp",)),
}
LLAMACPP_ADAPTER_TARGET = 0.90
LONG_ANSWER = ("Write a Python module with twenty small utility functions for strings, lists and dates, "
               "each with a docstring and an example.")
# Random adapters' strength: small enough that the answer stays long, the same work per token.
RANDOM_SCALE = 0.25


def _rss() -> int:
    import psutil

    gc.collect()
    return psutil.Process().memory_info().rss


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).glob("*.safetensors"))


def _adapters_for(eng, tmp: Path, rank: int, log, active: Path | None = None) -> tuple[dict[str, Path], str]:
    """Trained adapters from the store when every task has one, else random rank-`rank` adapters
    on all attention and MLP projections of the loaded model (non-zero, so they cost what real
    ones cost). `active`: this adapter folder is the first task's, the one measured active."""
    if active is not None:
        folders, source = _adapters_for(eng, tmp, rank, log)
        first = task_names()[0]
        return {first: Path(active), **{t: f for t, f in folders.items() if t != first}}, \
            f"{first}: {active}; the others {source}"
    from app.engine.adapter_write import write_mlx
    from app.tiny import random_adapter_for

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
    info = eng.model_info
    fp = {k: v for k, v in info.fingerprint.items() if k != "max_position_embeddings"}
    return ({task: write_mlx(random_adapter_for(eng.linear_shapes(), fp, info.ref, seed=i + 1, rank=rank,
                                                scale=RANDOM_SCALE),
                             tmp / task)
             for i, task in enumerate(task_names())}, f"random rank-{rank}, all attention+MLP projections")


def stream_decode(eng, messages, settings) -> tuple[float, int]:
    """Decode tokens/s of one answer, timed from outside the engine as each token arrives, and
    its number of tokens."""
    stamps, seen = [], 0
    for chunk in eng.stream_generate(messages, settings):
        now = time.perf_counter()
        stamps += [now] * (chunk.generation_tokens - seen)  # a chunk may carry several tokens
        seen = max(seen, chunk.generation_tokens)
    return decode_tps(stamps), len(stamps)


def stream_decode_tps(eng, messages, settings) -> float:
    return stream_decode(eng, messages, settings)[0]


def run_speed(model: str | None = None, engine: str | None = None, max_tokens: int = 32, switches: int = 1000,
              rank: int = 16, rounds: int = 3, vs: dict[str, str] | None = None, adapter: str | None = None,
              log=lambda s: print(s, file=sys.stderr)) -> dict:
    kind = choose_engine(engine)
    ref = choose_model(model, kind)
    eng = new_engine(kind)
    log(f"loading {ref} on {kind} ...")
    info = eng.load(ref)
    # A request with a long answer, so every configuration decodes `max_tokens` steps (an early EOS
    # would compare speeds at different lengths; the token counts are reported beside the speeds).
    messages = get_task("code").messages(LONG_ANSWER)
    settings = GenerationSettings(max_tokens=max_tokens)  # greedy, no stop strings

    lengths = {}

    def decode(key: str = "engine") -> float:
        tps, n = stream_decode(eng, messages, settings)
        lengths.setdefault(key, []).append(n)
        return tps

    decode()  # warm-up: first-call compilation and allocation
    rss_before = _rss()
    with tempfile.TemporaryDirectory() as tmp:
        folders, source = _adapters_for(eng, Path(tmp), rank, log, adapter)
        for name, folder in folders.items():
            eng.add_adapter(name, folder, force=True)  # random adapters record a local base
        adapters_mem = _rss() - rss_before
        disk = sum(_folder_bytes(f) for f in folders.values())
        names = list(folders)

        times = []
        for i in range(switches):
            target = names[i % len(names)]
            t0 = time.perf_counter_ns()
            eng.activate(target)
            times.append((time.perf_counter_ns() - t0) / 1e6)

        merge = _merge(eng, names[0], messages, settings, log) if hasattr(eng, "merge_now") else {}
        log(f"loading {ref} again, a second {kind} engine that never loads an adapter ...")
        bare_eng = new_engine(kind)
        bare_eng.load(ref)
        stream_decode(bare_eng, messages, settings)  # its warm-up
        others = {k: _other_engine(k, m, log) for k, m in (vs or {}).items()}
        log(f"decoding {max_tokens} tokens x {rounds} rounds, every configuration interleaved"
            + (f" with {', '.join(others)}" if others else "") + " ...")
        bare, base_tps, adapter_tps, merged_tps, other_tps = [], [], [], [], {k: [] for k in others}
        for _ in range(rounds):
            tps, n = stream_decode(bare_eng, messages, settings)
            bare.append(tps)
            lengths.setdefault("base_noadapter", []).append(n)
            eng.activate(None)
            base_tps.append(decode("base"))
            eng.activate(names[0])
            if merge:
                eng.use_merged(False)
            adapter_tps.append(decode("adapter"))
            if merge:
                eng.use_merged(True)
                merged_tps.append(decode("adapter_merged"))
                eng.use_merged(False)
            for k, other in others.items():
                other_tps[k].append(stream_decode_tps(other, messages, settings))
        del bare_eng

        base = statistics.median(base_tps)
        noadapter = statistics.median(bare)
        result = {
            "engine": kind,
            "model": ref,
            "quantization": info.quantization,
            "adapters": source,
            "adapter_count": len(names),
            "switches": switches,
            "switch_p50_ms": round(statistics.median(times), 5),
            "switch_p99_ms": round(percentile(times, 0.99), 5),
            "base_decode_noadapter_tps": round(noadapter, 3),
            "base_decode_tps": round(base, 3),
            "resident_decode_ratio": round(base / noadapter, 4),
            "adapter_decode_tps": round(statistics.median(adapter_tps), 3),
            "adapter_decode_ratio": round(statistics.median(adapter_tps) / noadapter, 4),
            "adapter_vs_resident_ratio": round(statistics.median(adapter_tps) / base, 4),
            "adapter_resident_bytes": adapters_mem,
            "adapter_disk_bytes": disk,
            "adapter_memory_ratio": round(adapters_mem / disk, 4) if disk else None,
            "memory": "process RSS after adding the adapters - before",
            "answer_tokens": {k: int(statistics.median(v)) for k, v in lengths.items() if k != "engine"},
            "max_tokens": max_tokens,
            "rounds": rounds,
            "cpu": getattr(eng, "cpu_flags", lambda: "")(),
        }
        if merge:
            result["merged_decode_tps"] = round(statistics.median(merged_tps), 3)
            result["merged_decode_ratio"] = round(statistics.median(merged_tps) / noadapter, 4)
            result.update(merge)
        for k, tps in other_tps.items():
            result[f"{k}_model"] = vs[k]
            result[f"{k}_base_decode_tps"] = round(statistics.median(tps), 3)
            result[f"base_decode_vs_{k}_ratio"] = round(base / statistics.median(tps), 4)
        others.clear()
        try:
            bench = importlib.import_module(f"app.engine.{kind}_bench")
        except ModuleNotFoundError:
            bench = None
        if bench is not None:
            eng.activate(names[0])
            kwargs = dict(model_path=info.path, adapter_folders={names[0]: folders[names[0]], **folders},
                          tokens=eng.encode(eng.chat_prompt(messages)), prompt=eng.chat_prompt(messages),
                          max_tokens=max_tokens, engine_decode=decode, rounds=rounds, engine=eng)
            accepted = inspect.signature(bench.reference).parameters
            log("measuring the reference library on the same model ...")
            result.update(bench.reference(**{k: v for k, v in kwargs.items() if k in accepted}))
    return result


def _merge(eng, name: str, messages, settings, log) -> dict:
    """Build the merged copy of adapter `name` (llama.cpp) and compare it with the resident LoRA on
    every task's example input: next-token logits (the change from the base, correlated) and the
    greedy answers. Leaves the copy built, not in use."""
    eng.activate(name)
    eng.use_merged(False)
    rss = _rss()
    log(f"building the merged copy of {name} ...")
    t0 = time.perf_counter()
    copy = eng.merge_now()
    seconds = time.perf_counter() - t0
    if copy is None:
        log(f"no merged copy: {eng.merge_status()}")
        return {}
    out = {"merge_seconds": round(seconds, 2), "merge_bytes": copy.nbytes, "merge_rss_bytes": _rss() - rss}
    import numpy as np

    corr, same, agree = [], 0, []
    short = GenerationSettings(max_tokens=min(settings.max_tokens, 64))
    for task in task_names():
        msgs = get_task(task).messages(get_task(task).example_input)
        prompt = eng.chat_prompt(msgs)
        eng.activate(None)
        base = eng.next_token_logits(prompt)
        eng.activate(name)
        eng.use_merged(False)
        lora, lora_text = eng.next_token_logits(prompt), eng.generate(msgs, short)
        eng.use_merged(True)
        merged, merged_text = eng.next_token_logits(prompt), eng.generate(msgs, short)
        corr.append(float(np.corrcoef(lora - base, merged - base)[0, 1]))
        same += lora_text == merged_text
        agree.append(len(os.path.commonprefix([eng.encode(lora_text), eng.encode(merged_text)])))
    eng.use_merged(False)
    out["merged_vs_lora_logit_corr_min"] = round(min(corr), 5)
    out["merged_same_greedy_answers"] = f"{same}/{len(corr)} task examples, {short.max_tokens} tokens"
    # where unequal answers part: a near tie between two tokens flips, and the rest follows from it
    out["merged_greedy_tokens_before_they_differ"] = agree
    out["merge_type"] = "the base's own type where possible" if getattr(eng, "merge_keep_type", False) else "Q8_0"
    return out


def _other_engine(kind: str, model: str, log):
    other = new_engine(kind)
    log(f"loading {model} on {kind} for the side-by-side base decode ...")
    other.load(model)
    return other


def _target(key: str, engine: str):
    if key == "adapter_decode_ratio" and engine == "llamacpp":
        return ">=", LLAMACPP_ADAPTER_TARGET
    spec = TARGETS.get(key)
    if spec is None or (spec[2] is not None and engine not in spec[2]):
        return None
    return spec[0], spec[1]


def format_result(r: dict) -> str:
    lines = [f"engine {r['engine']} | model {r['model']} ({r.get('quantization') or 'unquantized'}) | "
             f"adapters: {r['adapter_count']} {r['adapters']}"]
    for key, value in r.items():
        if key in ("engine", "model", "quantization", "adapters"):
            continue
        mark = ""
        target = _target(key, r["engine"])
        if target is not None and isinstance(value, (int, float)):
            op, target = target
            ok = value <= target if op == "<=" else value >= target
            mark = f"   target {op} {target}: {'met' if ok else 'MISSED'}"
        lines.append(f"  {key:32} {value}{mark}")
    return "\n".join(lines)


def register_speed(bench_sub, common) -> None:
    p = bench_sub.add_parser("speed", parents=[common], help="adapter switch time, decode ratios, adapter memory")
    p.add_argument("--max-tokens", type=int, default=32, help="tokens per decode run (default 32)")
    p.add_argument("--switches", type=int, default=1000)
    p.add_argument("--rank", type=int, default=16, help="rank of the random adapters (when none are trained)")
    p.add_argument("--adapter", metavar="FOLDER", help="the adapter measured active (e.g. a trained or shipped "
                   "one: its rank and the layers it adapts set its cost); default a random one on every projection")
    p.add_argument("--rounds", type=int, default=3, help="interleaved decode runs per configuration")
    p.add_argument("--vs", action="append", default=[], metavar="ENGINE=MODEL",
                   help="also measure another engine's base decode in the same run, e.g. --vs torch=./hf-folder")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_speed)


def _cmd_speed(args) -> int:
    vs = {}
    for item in args.vs:
        kind, sep, model = item.partition("=")
        if not sep or not model:
            raise ValueError(f"--vs takes ENGINE=MODEL (e.g. torch=./model-folder), not {item!r}")
        vs[kind] = model
    r = run_speed(args.model, args.engine, args.max_tokens, args.switches, args.rank, args.rounds, vs=vs, adapter=args.adapter)
    print(json.dumps(r, indent=2) if args.json else format_result(r))
    return 0
