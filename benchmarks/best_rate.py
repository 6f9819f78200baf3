"""Two sets of blocks, each at its best learning rate of a grid, paired by seed: is one's gap to the other a rate at
which it was not at its best? Over main-part records and their added peers (`benchmarks.add_peers`):

    python -m benchmarks.best_rate RECORD.json [RECORD.json ...] \
        --grid positive,kept_at_raised_rate,kept_at_rate_4 --against lora_all,all_at_raised_rate,all_at_rate_4

A grid is a comma-separated list of arms, one set of blocks at several rates. In each (task, regime) cell, over the
seeds that every arm of both grids has, two ways to choose a grid's rate: `best` takes the arm with the highest mean
accuracy over those seeds (the same choice, and the same optimism, for both grids); `held out` chooses it for each seed
on the other seeds' mean and compares on that seed (no optimism). A tie goes to the arm listed first. Prints each
cell's mean accuracy per arm and the choices, then the paired differences (points, 95 % t interval, wins/losses) by
regime.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from . import report
from .stats import paired_text


def mean_accuracy(runs: dict, seeds: list) -> float:
    return statistics.fmean(runs[seed]["accuracy"] for seed in seeds)


def best_arm(arms: dict, grid: list[str], seeds: list) -> str:
    """The grid's arm with the highest mean accuracy over `seeds`; the first listed on a tie."""
    return max(grid, key=lambda arm: (mean_accuracy(arms[arm], seeds), -grid.index(arm)))


def cell_choices(arms: dict, grid: list[str], against: list[str]) -> dict | None:
    """A cell's seeds, its `best` pair of arms and difference, and per seed its `held out` difference (points)."""
    seeds = sorted(set.intersection(*(set(arms.get(arm, {})) for arm in grid + against)), key=str)
    if len(seeds) < 2:
        return None
    one, other = best_arm(arms, grid, seeds), best_arm(arms, against, seeds)
    best = [100 * (arms[one][s]["accuracy"] - arms[other][s]["accuracy"]) for s in seeds]
    held_out = []
    for seed in seeds:
        rest = [s for s in seeds if s != seed]
        chosen = best_arm(arms, grid, rest), best_arm(arms, against, rest)
        held_out.append(100 * (arms[chosen[0]][seed]["accuracy"] - arms[chosen[1]][seed]["accuracy"]))
    return {"seeds": seeds, "best": (one, other), "best_diffs": best, "held_out_diffs": held_out}


def tables(results: dict, grid: list[str], against: list[str]) -> list[str]:
    """The cell table (mean accuracy of every arm, the best of each grid), then the pooled table by regime."""
    every = report.cells(results)
    found = {cell: choice for cell, arms in every.items() if (choice := cell_choices(arms, grid, against))}
    lines = [f"| task | regime | seeds | {' | '.join(grid + against)} | best | best - best |",
             "|---|---|---|" + "---|" * (len(grid) + len(against) + 2)]
    for (task, regime), choice in sorted(found.items(), key=lambda item: (item[0][1], item[0][0])):
        means = [f"{mean_accuracy(every[(task, regime)][arm], choice['seeds']):.3f}" for arm in grid + against]
        lines.append(f"| {task} | {regime} | {len(choice['seeds'])} | {' | '.join(means)} | "
                     f"{' - '.join(choice['best'])} | {statistics.fmean(choice['best_diffs']):+.1f} |")
    lines += ["", "| regime | cells | best - best | held out - held out |", "|---|---|---|---|"]
    regimes = sorted({r for _, r in found})
    for regime in regimes + ["both"] * (len(regimes) > 1):
        chosen = [c for (_, r), c in found.items() if regime in (r, "both")]
        best = [d for c in chosen for d in c["best_diffs"]]
        held_out = [d for c in chosen for d in c["held_out_diffs"]]
        lines.append(f"| {regime} | {len(best)} | {paired_text(best)} | {paired_text(held_out)} |")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.best_rate", description=__doc__.split("\n\n")[0])
    p.add_argument("records", nargs="+", type=Path, help="main-part records and their peers' records")
    arms = dict(type=lambda text: text.split(","), required=True)
    p.add_argument("--grid", **arms, help="comma-separated arms: one set of blocks at several rates")
    p.add_argument("--against", **arms, help="comma-separated arms: the other set at several rates")
    args = p.parse_args(argv)
    print(*tables(report.read_combined(args.records), args.grid, args.against), sep="\n")


if __name__ == "__main__":
    main()
