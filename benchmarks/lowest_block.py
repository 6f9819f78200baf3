"""Why end to end <= 0.95x hinges on the selection's lowest kept block: over every committed result, Flexora's
fine-tune step against all-block LoRA's of the same run, by the lowest kept block, and where selections start.

    python -m benchmarks.lowest_block [results dir]

Flexora's fine-tune needs no backward below its lowest kept block; above it, it saves only the LoRA modules it drops.
A random half of 30 blocks keeps block 0 or 1 with probability 1 - (15 x 14) / (30 x 29) = 0.76.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import Counter
from pathlib import Path

GROUPS = ((0, 1), (2, 6), (7, 29))


def records(root: Path):
    """Every benchmark record under `root` (the JSON objects; a file holding a list is not one)."""
    for path in sorted(root.rglob("*.json")):
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            yield data


def seconds_per_step(run: dict) -> float:
    return run["finetune_seconds"] / run["finetune_steps"]


def step_ratios(root: Path) -> list[tuple[int, float]]:
    """(lowest kept block, Flexora's fine-tune step / all-block LoRA's) for each long run with both arms."""
    ratios = []
    for data in records(root):
        runs = data.get("long") or []
        lora = {run["seed"]: run for run in runs if run["arm"] == "lora_all"}
        for run in runs:
            if run["arm"] == "flexora" and run["seed"] in lora:
                ratio = seconds_per_step(run) / seconds_per_step(lora[run["seed"]])
                ratios.append((min(run["selected_layers"]), ratio))
    return ratios


def lowest_blocks(root: Path) -> Counter:
    """The lowest kept block of each distinct q,v selection (main and long parts; a rerun counted once)."""
    seen = {}
    for data in records(root):
        for run in (data.get("runs") or []) + (data.get("long") or []):
            if run.get("arm") == "flexora" and run.get("selected_layers") and run.get("targets", "qv") == "qv":
                key = (run.get("task"), run.get("regime"), run.get("seed"), tuple(run["selected_layers"]))
                seen[key] = min(run["selected_layers"])
    return Counter(seen.values())


def main(root: Path = Path(__file__).parent / "results") -> None:
    ratios = step_ratios(root)
    print("| lowest kept block | runs | Flexora fine-tune step / all-block LoRA's: median (range) |\n|---|---|---|")
    for low, high in GROUPS:
        group = [ratio for block, ratio in ratios if low <= block <= high]
        if group:
            print(f"| {low} to {high} | {len(group)} | {statistics.median(group):.3f} "
                  f"({min(group):.3f}-{max(group):.3f}) |")
    print(f"fine-tune at <= 0.874x (end to end <= 0.95x with an 8.7 % search): "
          f"{sum(ratio <= 0.874 for _, ratio in ratios)} of {len(ratios)}")
    lows = lowest_blocks(root)
    total = sum(lows.values())
    print(f"{total} distinct selections: lowest kept block 0 or 1 in {lows[0] + lows[1]}, "
          f"7 or above in {sum(n for block, n in lows.items() if block >= 7)}")


if __name__ == "__main__":
    main(*(Path(arg) for arg in sys.argv[1:2]))
