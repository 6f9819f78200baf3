"""Two sets of blocks each at its best rate of a grid: the choice over all seeds, the choice with the compared seed left
out, and the pooled table (benchmarks.best_rate)."""

from __future__ import annotations

import pytest

from benchmarks.best_rate import best_arm, cell_choices, tables


def runs(*accuracies):
    return {seed: {"accuracy": accuracy} for seed, accuracy in enumerate(accuracies)}


# a cell: the kept blocks best at the raised rate but for seed 3, all blocks best at the raised rate
CELL = {"kept": runs(0.50, 0.50, 0.50, 0.90), "kept_x2": runs(0.60, 0.60, 0.60, 0.40),
        "all": runs(0.55, 0.55, 0.55, 0.55), "all_x2": runs(0.70, 0.70, 0.70, 0.70), "other": runs(0.1)}


def test_the_best_arm_is_the_highest_mean_over_the_given_seeds_and_the_first_listed_on_a_tie():
    assert best_arm(CELL, ["kept", "kept_x2"], [0, 1, 2, 3]) == "kept"  # 0.600 against 0.550
    assert best_arm(CELL, ["kept", "kept_x2"], [0, 1, 2]) == "kept_x2"
    tied = {"a": runs(0.5, 0.7), "b": runs(0.7, 0.5)}
    assert best_arm(tied, ["a", "b"], [0, 1]) == "a" and best_arm(tied, ["b", "a"], [0, 1]) == "b"


def test_a_cell_is_compared_on_the_seeds_every_arm_has_with_and_without_the_compared_seed():
    choice = cell_choices(CELL, ["kept", "kept_x2"], ["all", "all_x2"])
    assert choice["seeds"] == [0, 1, 2, 3] and choice["best"] == ("kept", "all_x2")
    assert choice["best_diffs"] == pytest.approx([-20, -20, -20, 20])
    # seed 3 left out, kept_x2 wins on 0-2 and scores 0.40 on seed 3; seeds 0-2 left out, kept wins on the rest
    assert choice["held_out_diffs"] == pytest.approx([-20, -20, -20, -30])
    assert cell_choices(CELL, ["kept", "other"], ["all"]) is None  # one common seed: nothing to choose on


def test_the_table_pools_the_cells_by_regime():
    results = {"runs": [{**run, "task": task, "regime": "learn", "arm": arm, "seed": seed}
                        for task in ("t1", "t2") for arm, by_seed in CELL.items() for seed, run in by_seed.items()]}
    lines = tables(results, ["kept", "kept_x2"], ["all", "all_x2"])
    assert "| t1 | learn | 4 | 0.600 | 0.550 | 0.550 | 0.700 | kept - all_x2 | -10.0 |" in lines
    held_out = "-22.5 [-26.4, -18.6] 0/8"  # 6 x -20 and 2 x -30: sd 4.63, half width 2.365 x 4.63 / sqrt(8)
    assert lines[-1].startswith("| learn | 8 | -10.0 [") and lines[-1].endswith(f"] 2/6 | {held_out} |")
