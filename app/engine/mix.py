"""Weighted mixes of resident adapters: parsing, checking, naming, and merging into one adapter.

A mix {name: w} makes every adapted layer compute y = W x + sum_i w_i * s_i * (x A_i) B_i: each
adapter's own delta times its weight (llama.cpp's per-request scales do the same). That is exact,
unlike averaging A and B (PEFT's `linear` combination, whose product has cross terms). The same
sum as one adapter concatenates the ranks: A = [A_1 | A_2], B = [w_1 s_1 B_1 ; w_2 s_2 B_2] with
scale 1 (`merge`), which other servers (vLLM, LoRAX, PEFT) load as an ordinary LoRA.
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from app.engine.lora import LoraModule, LoraWeights
from app.errors import EngineError

PREFIX = "mix:"  # the API's model id for a mix: "mix:math=0.7,code=0.3"
MAX_WEIGHT = 10.0  # |w| beyond this is almost surely a typo (0.7 written as 7, say)


def parse(text: str, what: str = "--mix") -> dict[str, float]:
    """'math=0.7,code=0.3' (or 'mix:math=0.7,code=0.3') as {name: weight}; ValueError saying
    what was wrong otherwise."""
    body = text.strip().removeprefix(PREFIX)
    example = "e.g. math=0.7,code=0.3"
    if not body:
        raise ValueError(f"{what} is empty; give NAME=WEIGHT pairs separated by commas, {example}")
    out: dict[str, float] = {}
    for part in body.split(","):
        name, eq, value = part.partition("=")
        name, value = name.strip(), value.strip()
        if not eq or not name or not value:
            raise ValueError(f"{what} {text!r}: {part.strip()!r} is not NAME=WEIGHT; {example}")
        try:
            w = float(value)
        except ValueError:
            raise ValueError(f"{what} {text!r}: the weight of {name!r} is {value!r}, not a number") from None
        if name in out:
            raise ValueError(f"{what} {text!r}: {name!r} appears twice")
        out[name] = w
    return check_weights(out, what)


def check_weights(weights: Mapping[str, float], what: str = "the mix") -> dict[str, float]:
    """Finite weights of at most MAX_WEIGHT in size; zero weights dropped (they add nothing)."""
    out = {}
    for name, w in weights.items():
        if not isinstance(w, (int, float)) or isinstance(w, bool) or not math.isfinite(w):
            raise ValueError(f"{what}: the weight of {name!r} must be a finite number, got {w!r}")
        if abs(w) > MAX_WEIGHT:
            raise ValueError(f"{what}: the weight of {name!r} is {w}; weights are at most {MAX_WEIGHT:g} in size "
                             "(1.0 is the adapter as trained)")
        if w != 0:
            out[str(name)] = float(w)
    return out


def check_names(weights: Mapping[str, float], adapters: Mapping) -> None:
    """Every adapter of the mix is resident; else one error naming all that are not."""
    missing = [n for n in weights if n not in adapters]
    if missing:
        known = ", ".join(adapters) or "none"
        raise EngineError(f"cannot mix {', '.join(map(repr, missing))}: not loaded (loaded adapters: {known})")


def label(weights: Mapping[str, float]) -> str:
    """The mix's id, as the API and status lines show it: 'mix:math=0.7,code=0.3'."""
    return PREFIX + ",".join(f"{n}={w:g}" for n, w in weights.items())


def merge(parts: Mapping[str, tuple[float, "object"]]):
    """One LoraWeights equal to the mix of {name: (weight, LoraWeights)}: per module the ranks are
    concatenated (zero-padded where an adapter does not target the module, so every module has the
    same rank r = sum of ranks) and weight * scale is folded into B, so the scale is 1 everywhere."""
    if not parts:
        raise ValueError("the mix is empty")
    items = list(parts.items())
    ranks = [lw.rank for _, (_, lw) in items]
    total = sum(ranks)
    names = sorted({m for _, (_, lw) in items for m in lw.modules})
    modules = {}
    for mod in names:
        shapes = [(lw.modules[mod].a.shape[0], lw.modules[mod].b.shape[1]) for _, (_, lw) in items if mod in lw.modules]
        n_in, n_out = shapes[0]
        a = np.zeros((n_in, total), np.float32)
        b = np.zeros((total, n_out), np.float32)
        at = 0
        for (_, (w, lw)), r in zip(items, ranks):
            m = lw.modules.get(mod)
            if m is not None:
                a[:, at:at + m.rank] = m.a
                b[at:at + m.rank] = (w * m.scale) * m.b.astype(np.float64)
            at += r
        modules[mod] = LoraModule(a=a, b=b, scale=1.0)
    first = items[0][1][1]
    meta = {"mix": {n: w for n, (w, _) in items},
            "mixed_from": {n: lw.metadata.get("name") or n for n, (_, lw) in items}}
    return LoraWeights(modules=modules, format="peft", base_model=first.base_model,
                       fingerprint=dict(first.fingerprint), metadata=meta)
