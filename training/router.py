"""Train the Auto router and write its weights to resources/router/router.npz.

    python -m training.router            # rebuild the shipped weights (deterministic, ~10 s of CPU)
    python -m training.router --check    # also score the held-out set

Multinomial logistic regression on app.router.features, full-batch Adam with L2, in numpy. The
prompts come from training/router_data.py (seeded templates); the held-out set
(resources/router/heldout.jsonl, built by training/router_heldout.py) is never trained on.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from app.router import BITS, NONE, WEIGHTS, Router, accuracy, features, heldout
from app.tasks import task_names
from training.router_data import training_prompts

STEPS = 150
LR = 0.1
L2 = 1e-4  # per-example penalty on the weights: keeps hashed collisions from dominating


def labels() -> list[str]:
    return task_names() + [NONE]


def _design(texts: list[str]):
    """The sparse design matrix as (rows, cols, vals) arrays."""
    rows, cols, vals = [], [], []
    for i, t in enumerate(texts):
        idx, val = features(t)
        rows.append(np.full(len(idx), i, np.int64))
        cols.append(idx)
        vals.append(val)
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(vals).astype(np.float64)


def train(texts: list[str], ys: list[int], n_labels: int, steps: int = STEPS):
    rows, cols, vals = _design(texts)
    n, d = len(texts), 1 << BITS
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])  # rows are sorted: one run per prompt
    y = np.zeros((n, n_labels))
    y[np.arange(n), ys] = 1.0
    w = np.zeros((d, n_labels))  # convex: no random start needed, and unused buckets stay 0 (small file)
    b = np.zeros(n_labels)
    m = [np.zeros_like(w), np.zeros_like(b)]
    v = [np.zeros_like(w), np.zeros_like(b)]
    flat = (cols[:, None] * n_labels + np.arange(n_labels)).ravel()  # gradient scatter into w.ravel()
    for step in range(1, steps + 1):
        z = np.add.reduceat(vals[:, None] * w[cols], starts, axis=0) + b
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        g = (p - y) / n
        gw = np.bincount(flat, weights=(vals[:, None] * g[rows]).ravel(), minlength=d * n_labels).reshape(d, n_labels)
        gw += L2 * w
        gb = g.sum(axis=0)
        for k, (param, grad) in enumerate(((w, gw), (b, gb))):
            m[k] = 0.9 * m[k] + 0.1 * grad
            v[k] = 0.999 * v[k] + 0.001 * grad * grad
            param -= LR * (m[k] / (1 - 0.9 ** step)) / (np.sqrt(v[k] / (1 - 0.999 ** step)) + 1e-8)
    return w, b


def build(out: Path = WEIGHTS, per_label: int = 400) -> Path:
    names = labels()
    data = training_prompts(per_label)
    w, b = train([t for t, _ in data], [names.index(lab) for _, lab in data], len(names))
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"bits": BITS, "labels": names, "examples": len(data), "steps": STEPS}
    np.savez_compressed(out, w=w.astype(np.float16), b=b.astype(np.float32), meta=np.array(json.dumps(meta)))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=WEIGHTS)
    ap.add_argument("--check", action="store_true", help="score the held-out set afterwards")
    args = ap.parse_args(argv)
    path = build(args.out)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KB)")
    if args.check:
        items = heldout()
        acc, confusion, names = accuracy(Router.load(path), items)
        print(f"held-out accuracy {acc:.1%} on {len(items)} prompts")
        for name, row in zip(names, confusion):
            print(f"  {name:11}", " ".join(f"{x:4d}" for x in row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
