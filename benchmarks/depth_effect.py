"""Does a selection beat the depth it keeps? The gate leans to the lower blocks, and in some regimes a lower set of
blocks learns better whoever picks it; so a selection's edge over random blocks may be its depth, not its choice.

    python -m benchmarks.depth_effect [results.json ...]   # default: the committed full run; several: one run

Within each (task, regime, seed) cell of a main part, every run on a subset of the blocks (Flexora, each random
draw, Spectrum, the lowest blocks, the blocks Flexora's score ranks last) gives its accuracy and the mean index of
its blocks, both minus the cell's mean over those runs. One least-squares fit per regime (and over both): accuracy =
slope x depth + one term per arm other than random. The slope is what a block lower in the stack is worth (negative:
lower is better); an arm's term is what it adds beyond the depth it keeps, against random draws of the same count;
each with its standard error (the fit's ordinary one: runs of a cell share the test items, so read it as rough).
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from .report import combined
from .run import RESULTS_DIR

SUBSET_ARMS = ("random", "flexora", "spectrum", "lowest", "last_ranked")  # random: the reference, no term of its own


def subset_runs(results) -> dict:
    """(task, regime, seed) -> the q,v runs on a subset of the blocks."""
    found = defaultdict(list)
    for run in results["runs"]:
        if run.get("arm") in SUBSET_ARMS and run.get("selected_layers") and run.get("accuracy") is not None:
            found[run["task"], run["regime"], run["seed"]].append(run)
    return found


def fit(cells) -> dict | None:
    """The slope and every present arm's term beyond depth (points of accuracy), with standard errors."""
    rows, accuracy = [], []
    for runs in cells:  # every column minus its cell's mean: the cell's own level (task, seed) drops out
        cell = np.array([[statistics.fmean(r["selected_layers"])] + [r["arm"] == arm for arm in SUBSET_ARMS[1:]]
                         for r in runs], dtype=float)
        points = np.array([100 * r["accuracy"] for r in runs])
        rows.extend(cell - cell.mean(0))
        accuracy.extend(points - points.mean())
    if not rows:
        return None
    x, y = np.array(rows), np.array(accuracy)
    present = np.abs(x).sum(0) > 1e-9
    x, names = x[:, present], [n for n, p in zip(("depth", *SUBSET_ARMS[1:]), present) if p]
    dof = len(y) - x.shape[1] - len(cells)  # each cell's mean took one
    if dof < 1:
        return None
    beta, *_ = np.linalg.lstsq(x, y, rcond=None)
    residual = y - x @ beta
    stderr = np.sqrt(np.diag(np.linalg.pinv(x.T @ x)) * (residual @ residual) / dof)
    return {"runs": len(y), **{name: (float(b), float(s)) for name, b, s in zip(names, beta, stderr)}}


def table(results) -> list[str]:
    cells = subset_runs(results)
    lines = ["| regime | runs | depth slope (points per block; negative: lower is better) | Flexora beyond depth | "
             "Spectrum beyond depth | lowest blocks beyond depth | last-ranked blocks beyond depth |",
             "|---|---|---|---|---|---|---|"]
    regimes = sorted({regime for _, regime, _ in cells}, key=("learn", "overfit").index)
    for regime in regimes + [None] * (len(regimes) > 1):  # None: both regimes in one fit
        fitted = fit([runs for (_, r, _), runs in cells.items() if regime in (None, r) and len(runs) > 2])
        if fitted is None:
            continue
        figures = [f"{fitted[n][0]:+.2f} ± {fitted[n][1]:.2f}" if n in fitted else "-"
                   for n in ("depth", *SUBSET_ARMS[1:])]
        lines.append(f"| {regime or 'both'} | {fitted['runs']} | {' | '.join(figures)} |")
    return lines


def main(argv=None):
    paths = (argv if argv is not None else sys.argv[1:]) or [RESULTS_DIR / "results.json"]
    print(*table(combined([json.loads(Path(path).read_text()) for path in paths])), sep="\n")


if __name__ == "__main__":
    main()
