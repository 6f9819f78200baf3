"""Merge a side run's budget/planted entries (e.g. `--out benchmarks/results/budget_side`) into the main results.

    python -m benchmarks.merge_side benchmarks/results/budget_side/results.json [benchmarks/results/results.json]
"""

import json
import sys
from pathlib import Path

from .report import write_reports


def main(argv=None):
    argv = argv or sys.argv[1:]
    side_path = Path(argv[0])
    main_path = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent / "results" / "results.json"
    side, results = json.loads(side_path.read_text()), json.loads(main_path.read_text())
    for part in ("budget", "planted"):
        have = {r["key"] for r in results.get(part, [])}
        for r in side.get(part, []):
            if r["key"] not in have:
                results.setdefault(part, []).append(dict(r, merged_from=str(side_path)))
    results["meta"]["merged_side_runs"] = sorted(set(results["meta"].get("merged_side_runs", []) + [str(side_path)]))
    main_path.write_text(json.dumps(results, indent=1))
    write_reports(results, main_path.parent)
    print((main_path.parent / "results.md").read_text())


if __name__ == "__main__":
    main()
