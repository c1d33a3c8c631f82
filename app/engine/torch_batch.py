"""Several answers decoded together on the torch engine: one forward call per step for all of them.

For work that has many prompts at once (a benchmark's items, a recipe's training questions), not for
the interactive path, which stays one answer at a time on torch. The prompts are left-padded to one
length and masked, each row gets its own positions, and a row that finishes leaves the batch (its
rows of the KV cache are dropped), so short answers cost nothing once done.

Batching pays where a matmul over several rows costs little more than one: CUDA, and float32 on a
CPU (0.5B model, 2 cores: 6 tok/s alone, 31 for 16 rows). bfloat16 on a CPU without native bf16
instructions stays compute-bound (9 -> 12 tok/s).
"""
from __future__ import annotations

import time

import torch

from app.engine.text import find_stop
from app.engine.rates import decode_rate


@torch.inference_mode()
def decode_together(model, device: str, prompts: list[list[int]], settings, eos: set[int], pad: int,
                    new_detok, sample, cancel=None) -> list[tuple[str, dict]]:
    """(text, stats) per prompt, as the one-at-a-time loop would give them: `sample(logits,
    settings, generator)` picks each row's token, with a generator per row seeded like a lone
    answer's, and `new_detok()` turns each row's tokens into text. Stats per row: prompt_tokens,
    generation_tokens, generation_tps (the row's own rate), finish_reason, batch (rows at the start)."""
    n = len(prompts)
    if cancel is not None and cancel.is_set():  # nothing read, nothing to answer
        return [("", {"prompt_tokens": len(p), "generation_tokens": 0, "finish_reason": "cancelled", "batch": n})
                for p in prompts]
    width = max(len(p) for p in prompts)
    ids = torch.full((n, width), pad, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    gens = [None] * n
    if settings.temperature > 0:
        seed = settings.seed if settings.seed is not None else int(time.time_ns() % 2**31)
        gens = [torch.Generator(device="cpu").manual_seed(seed) for _ in range(n)]
    detoks = [new_detok() for _ in range(n)]
    texts = [""] * n
    counts, finish = [0] * n, [None] * n
    live = list(range(n))  # original row of each batch row
    arg = cache_arg(model)
    start = time.perf_counter()
    out = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                use_cache=True, logits_to_keep=1)
    cache, logits = cache_of(out), out.logits[:, -1]
    prompt_tps = sum(map(len, prompts)) / max(time.perf_counter() - start, 1e-9)
    t_first = time.perf_counter()
    for step in range(1, settings.max_tokens + 1):
        stopped = cancel is not None and cancel.is_set()
        nxt, keep = [], []
        for b, i in enumerate(live):
            if stopped:
                finish[i] = "cancelled"
                continue
            token = sample(logits[b], settings, gens[i])
            counts[i] = step
            if token in eos:
                finish[i] = "stop"
                texts[i] += detoks[i].flush()
                continue
            shown = len(texts[i])
            texts[i] += detoks[i].add(token)
            cut = find_stop(texts[i], settings.stop, shown)
            if cut is not None:  # as stream_generate: the answer ends where a stop string starts
                texts[i], finish[i] = texts[i][:cut], "stop"
                continue
            if step == settings.max_tokens:
                finish[i] = "length"
                continue
            nxt.append(token)
            keep.append(b)
        if not keep:
            break
        if len(keep) < len(live):  # finished rows leave: their cache, mask and positions go
            index = torch.tensor(keep)
            cache.batch_select_indices(index.to(device))
            mask, positions = mask[index], positions[index]
            live = [live[b] for b in keep]
        mask = torch.cat([mask, torch.ones((len(live), 1), dtype=torch.long)], dim=1)
        positions = positions[:, -1:] + 1
        out = model(input_ids=torch.tensor([[t] for t in nxt], device=device), attention_mask=mask.to(device),
                    position_ids=positions.to(device), use_cache=True, **{arg: cache})
        cache, logits = cache_of(out), out.logits[:, -1]
    now = time.perf_counter()
    results = []
    for i in range(n):
        if finish[i] is None:
            finish[i] = "cancelled"
        if finish[i] != "stop":  # eos flushed already; a stop string's cut drops the rest
            texts[i] += detoks[i].flush()
        results.append((texts[i], {
            "prompt_tokens": len(prompts[i]), "prompt_tps": prompt_tps, "generation_tokens": counts[i],
            "generation_tps": decode_rate(counts[i], t_first, now), "finish_reason": finish[i], "batch": n}))
    return results


def cache_arg(model) -> str:
    """The forward argument that takes the KV cache: transformers 5 names it `cache`, older
    releases `past_key_values`."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def cache_of(out):
    """The KV cache a forward call returned, under either name (see `cache_arg`)."""
    return out.get("cache") if out.get("cache") is not None else out.get("past_key_values")
