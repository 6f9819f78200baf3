"""Is a planted block that a score misses a noise miss or a real one? For every recorded planted search, each planted
block outside the score's top k, how far its score lies under the k-th highest in standard errors (z, the two
errors combined), and its own score in standard errors (t). z < 2 is a miss inside the noise of the validation
batches the score was measured on (more batches could move it); t < -2 a block whose search LoRA measurably hurts
the held-out rows (more batches would not).

    python -m benchmarks.planted_misses benchmarks/results/planted-balanced/*.json
"""

from __future__ import annotations

import argparse
import json
import math


def misses(record: dict) -> list[dict]:
    """The planted blocks outside the top k (k = the number planted) of one planted record's `scores`."""
    scores, stderr = record["scores"], record["score_stderr"]
    ranked = sorted(scores, key=lambda b: (-scores[b], int(b)))
    kth = ranked[len(record["planted_blocks"]) - 1]
    found = []
    for block in map(str, record["planted_blocks"]):
        rank = ranked.index(block) + 1
        if rank <= len(record["planted_blocks"]):
            continue
        spread = math.hypot(stderr[block], stderr[kth])
        found.append({"block": int(block), "rank": rank,
                      "z_under_kth": (scores[kth] - scores[block]) / spread if spread else math.inf,
                      "t": scores[block] / stderr[block] if stderr[block] else math.copysign(math.inf, scores[block])})
    return found


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", help="results.json files of `benchmarks.run` with a planted part")
    args = p.parse_args(argv)
    by_score: dict[str, list[dict]] = {}
    print("| file | pair | score | planted block | rank | z under the k-th | own t |")
    print("|---|---|---|---|---|---|---|")
    for path in args.results:
        for record in json.load(open(path)).get("planted", []):
            score = record.get("selection_score") or "gate"
            if score == "gate":  # alpha's spread is how it moved late in the search, not a measurement's noise
                continue
            for miss in misses(record):
                by_score.setdefault(score, []).append(miss)
                print(f"| {path} | {record['key']} | {score} | {miss['block']} | {miss['rank']} | "
                      f"{miss['z_under_kth']:.2f} | {miss['t']:+.2f} |")
    print()
    for score, rows in by_score.items():
        print(f"{score}: {len(rows)} misses; inside the noise (z < 2): {sum(m['z_under_kth'] < 2 for m in rows)}; "
              f"own score measurably below zero (t < -2): {sum(m['t'] < -2 for m in rows)}")


if __name__ == "__main__":
    main()
