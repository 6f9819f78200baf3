"""Flexora's pairs split by its search's noise check, read from the committed third-seed records (48 cells)."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import report
from benchmarks.by_separation import flagged_differences, main, tables

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
RECORDS = sorted((RESULTS / "warm-start-generated").glob("*/*.json")) + sorted(
    (RESULTS / "default-generated").glob("*/*.json"))


def combined():
    return report.combined([json.loads(path.read_text()) for path in RECORDS])


def test_each_cell_carries_its_own_searchs_flag():
    """The flag of a pair is the one its cell's Flexora run wrote, and every pair of the 48 cells is there once."""
    flags = {(run["task"], run["regime"], run["seed"]): run["score_separation"]["separated"]
             for path in RECORDS for run in json.loads(path.read_text())["runs"] if run["arm"] == "flexora"}
    rows = flagged_differences(combined(), "positive", "random")
    assert len(rows) == len(flags) == 48
    assert sorted((task, regime, flag) for task, regime, flag, _ in rows) == sorted(
        (task, regime, flag) for (task, regime, _), flag in flags.items())
    assert {True, False} <= {flag for _, _, flag, _ in rows}


def test_the_flags_split_each_regime_into_parts_that_add_up(capsys):
    lines = tables(combined(), "positive", ["random", "lora_all"])
    counts = {tuple(cell.strip() for cell in line.split("|")[1:3]): int(line.split("|")[3])
              for line in lines if line.startswith(("| learn |", "| overfit |", "| both |"))}
    for regime in ("learn", "overfit", "both"):
        assert counts[(regime, "any")] == counts[(regime, "yes")] + counts[(regime, "no")]
    assert counts[("both", "any")] == counts[("learn", "any")] + counts[("overfit", "any")] == 48
    main([*map(str, RECORDS), "--minuend", "positive", "--peers", "random,lora_all"])
    assert capsys.readouterr().out.splitlines() == lines
