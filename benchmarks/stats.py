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


def paired_text(differences: list[float]) -> str:
    """A table cell for paired differences: `mean [low, high] wins/losses`, the mean alone for one, "-" for none."""
    if not differences:
        return "-"
    p = paired(differences)
    return f"{p.mean:+.1f} [{p.low:+.1f}, {p.high:+.1f}] {p.wins}/{p.losses}" if p.n > 1 else f"{p.mean:+.1f}"


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


@dataclass
class Rise:
    best_epoch: int  # 1-based, the lowest mean held-out loss
    rise: float  # mean loss at the last epoch minus at the best one
    stderr: float  # of `rise`, paired over test examples

    @property
    def beyond_noise(self) -> bool:
        """A rise of more than two standard errors (the best epoch is picked on the same data, so a rise that is pure
        noise would still come out a little positive: two standard errors, not one)."""
        return self.rise > 2 * self.stderr


def heldout_rise(item_losses_per_seed: list[list[list[float]]]) -> Rise:
    """Overfitting, told from noise: `item_losses_per_seed[seed][epoch][example]` is each held-out example's loss
    after each epoch. Each example's losses are averaged over seeds (the examples are shared, so they are the unit),
    the best epoch is the one with the lowest mean, and the rise is the paired last-minus-best difference."""
    epochs = min(len(seed) for seed in item_losses_per_seed)
    examples = len(item_losses_per_seed[0][0])
    per_example = [[statistics.fmean(seed[e][i] for seed in item_losses_per_seed) for i in range(examples)]
                   for e in range(epochs)]
    means = [statistics.fmean(epoch) for epoch in per_example]
    best = min(range(epochs), key=means.__getitem__)
    diffs = [last - low for last, low in zip(per_example[-1], per_example[best])]
    stderr = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else float("inf")
    return Rise(best + 1, statistics.fmean(diffs), stderr)
