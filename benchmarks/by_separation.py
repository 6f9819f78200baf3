"""Flexora against its peers, split by its search's noise check: does a selection whose kept and dropped blocks are not
separated (`score_separation.separated` false, the log's "coin flip" warning) do as well as random blocks, and one
that is separated better? Over main-part records and their added peers (e.g. `benchmarks.add_peers` outputs):

    python -m benchmarks.by_separation RECORD.json [RECORD.json ...] --minuend positive \
        --peers random,spectrum,lowest,lora_all

The flag is the cell's Flexora run's (its search); `--minuend` names the arm whose accuracy is compared, e.g.
`positive` where the record's Flexora fine-tune is not the default's (a warm start) but its search is. Prints the
paired differences (points, 95 % t interval, wins/losses) by regime and flag, then each task's mean over its seeds.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from . import report
from .stats import paired_text


def flagged_differences(results: dict, minuend: str, peer: str) -> list[tuple[str, str, bool | None, float]]:
    """(task, regime, separated, minuend - peer in points) for every seed both arms have in a cell with a search."""
    rows = []
    for (task, regime), arms in report.cells(results).items():
        for seed, search in arms.get("flexora", {}).items():
            one, other = arms.get(minuend, {}).get(seed), arms.get(peer, {}).get(seed)
            if one and other and search.get("score_separation"):
                rows.append((task, regime, search["score_separation"]["separated"],
                             100 * (one["accuracy"] - other["accuracy"])))
    return rows


def tables(results: dict, minuend: str, peers: list[str]) -> list[str]:
    """The regime-by-flag table, then the task table."""
    found = {peer: flagged_differences(results, minuend, peer) for peer in peers}
    regimes = sorted({regime for rows in found.values() for _, regime, _, _ in rows})
    lines = [f"| regime | search separated | cells | {' | '.join(f'{minuend} - {peer}' for peer in peers)} |",
             "|---|---|---|" + "---|" * len(peers)]
    for regime in [*regimes, "both"]:
        for flag in ("any", True, False, None):
            chosen = {peer: [d for _, r, sep, d in rows if regime in (r, "both") and flag in (sep, "any")]
                      for peer, rows in found.items()}
            cells = max(len(diffs) for diffs in chosen.values())
            if cells:
                named = {"any": "any", True: "yes", False: "no", None: "no spread"}[flag]
                lines.append(f"| {regime} | {named} | {cells} | "
                             f"{' | '.join(paired_text(chosen[peer]) for peer in peers)} |")
    lines += ["", f"| task | regime | seeds | {' | '.join(f'{minuend} - {peer}' for peer in peers)} |",
              "|---|---|---|" + "---|" * len(peers)]
    for task, regime in sorted({(t, r) for rows in found.values() for t, r, _, _ in rows}, key=lambda c: (c[1], c[0])):
        chosen = {peer: [d for t, r, _, d in rows if (t, r) == (task, regime)] for peer, rows in found.items()}
        means = [f"{statistics.fmean(chosen[peer]):+.1f}" if chosen[peer] else "-" for peer in peers]
        lines.append(f"| {task} | {regime} | {max(len(d) for d in chosen.values())} | {' | '.join(means)} |")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.by_separation", description=__doc__.split("\n\n")[0])
    p.add_argument("records", nargs="+", type=Path, help="main-part records and their peers' records")
    p.add_argument("--minuend", default="flexora", help="the arm compared (default: flexora)")
    p.add_argument("--peers", default="random,lora_all", type=lambda text: text.split(","),
                   help="comma-separated arms it is compared with (default: random,lora_all)")
    args = p.parse_args(argv)
    results = report.read_combined(args.records)
    print(*tables(results, args.minuend, args.peers), sep="\n")


if __name__ == "__main__":
    main()
