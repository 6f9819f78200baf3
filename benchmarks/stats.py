"""Paired statistics for comparing arms seed by seed, and what selection overlap random sets would give.

Arms are compared on the same test items with the same seed and data order, so the seed-to-seed noise they share
cancels in the per-seed difference; the interval is Student's t over those differences. With few seeds the interval is
wide, so the report also gives a sign test over all (task, seed) pairs.
"""

from __future__ import annotations

import itertools
import math
import statistics
from dataclasses import dataclass


@dataclass
class Paired:
    n: int
    mean: float
    sd: float
    low: float  # 95 % interval of the mean difference
    high: float
    wins: int
    losses: int
    sign_p: float  # two-sided sign test, ties dropped

    @property
    def verdict(self) -> str:
        if self.n < 2:
            return "one seed"
        if self.low > 0:
            return "better"
        if self.high < 0:
            return "worse"
        return "tie"


def t_quantile_975(df: int) -> float:
    """Two-sided 95 % quantile of Student's t (exact for the small df a benchmark has, via scipy when present)."""
    try:
        from scipy.stats import t

        return float(t.ppf(0.975, df))
    except ImportError:
        table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}
        return table.get(df, 1.96 + 2.5 / df)


def sign_test(wins: int, losses: int) -> float:
    """Two-sided binomial sign test p-value (ties are dropped before calling)."""
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired(differences: list[float]) -> Paired:
    n = len(differences)
    mean = statistics.fmean(differences)
    sd = statistics.stdev(differences) if n > 1 else 0.0
    half = t_quantile_975(n - 1) * sd / math.sqrt(n) if n > 1 else float("inf")
    wins = sum(d > 0 for d in differences)
    losses = sum(d < 0 for d in differences)
    return Paired(n, mean, sd, mean - half, mean + half, wins, losses, sign_test(wins, losses))


def jaccard(a, b) -> float:
    a, b = set(a), set(b)
    return len(a & b) / len(a | b) if a | b else 1.0


def mean_pairwise_jaccard(selections: list) -> float | None:
    pairs = list(itertools.combinations(selections, 2))
    return statistics.fmean(jaccard(a, b) for a, b in pairs) if pairs else None


def expected_jaccard(size_a: int, size_b: int, total: int) -> float:
    """E[|A & B| / |A | B|] for A, B drawn uniformly at random with the given sizes out of `total` blocks
    (the overlap is hypergeometric)."""
    expectation = 0.0
    for overlap in range(max(0, size_a + size_b - total), min(size_a, size_b) + 1):
        p = math.comb(size_a, overlap) * math.comb(total - size_a, size_b - overlap) / math.comb(total, size_b)
        union = size_a + size_b - overlap
        expectation += p * (overlap / union if union else 1.0)
    return expectation


def expected_pairwise_jaccard(sizes: list[int], total: int) -> float | None:
    pairs = list(itertools.combinations(sizes, 2))
    return statistics.fmean(expected_jaccard(a, b, total) for a, b in pairs) if pairs else None
