"""Intervals and paired tests for accuracy-style scores (0/1 per item), standard library only.

    wilson(83, 319)                   # 95 % interval of a proportion
    paired(base_hits, adapter_hits)   # the same items under two configurations: McNemar's exact test

Wilson's interval stays inside [0, 1] and is honest at small n, where the normal approximation is
not. McNemar's test looks only at the items the two configurations disagree on; its exact form is
a two-sided binomial test of those discordant items at p = 1/2.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

Z95 = 1.959963984540054


def wilson(hits: float, n: int, z: float = Z95) -> tuple[float, float]:
    """(low, high) of the Wilson score interval for `hits` successes out of `n`."""
    if n <= 0:
        return 0.0, 1.0
    p = hits / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # at 0 or n hits one end is exact; rounding would put it a hair inside
    return (0.0 if hits <= 0 else max(0.0, centre - half)), (1.0 if hits >= n else min(1.0, centre + half))


def binomial_two_sided(k: int, n: int) -> float:
    """Exact two-sided p-value of k successes in n trials at p = 1/2."""
    if n == 0:
        return 1.0
    k = min(k, n - k)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


@dataclass
class Paired:
    n: int
    a: float  # mean score of the first configuration
    b: float
    only_a: int  # items the first gets right and the second wrong
    only_b: int
    p_value: float  # McNemar's exact test
    diff_low: float  # 95 % interval of b - a (Wald on the paired differences)
    diff_high: float

    @property
    def diff(self) -> float:
        return self.b - self.a

    def to_json(self) -> dict:
        return {"n": self.n, "a": self.a, "b": self.b, "diff": self.diff, "only_a": self.only_a,
                "only_b": self.only_b, "p_value": self.p_value, "diff_95": [self.diff_low, self.diff_high]}


def paired(a: dict[str, float], b: dict[str, float]) -> Paired:
    """Compare two configurations on the items both scored (item id -> 0/1 score)."""
    ids = sorted(set(a) & set(b))
    n = len(ids)
    if not n:
        raise ValueError("no item was scored under both configurations")
    only_a = sum(1 for i in ids if a[i] >= 0.5 > b[i])
    only_b = sum(1 for i in ids if b[i] >= 0.5 > a[i])
    mean_a = sum(a[i] for i in ids) / n
    mean_b = sum(b[i] for i in ids) / n
    d = [b[i] - a[i] for i in ids]
    mean_d = sum(d) / n
    var = sum((x - mean_d) ** 2 for x in d) / max(1, n - 1)
    half = Z95 * math.sqrt(var / n)
    return Paired(n, mean_a, mean_b, only_a, only_b, binomial_two_sided(only_a, only_a + only_b),
                  mean_d - half, mean_d + half)
