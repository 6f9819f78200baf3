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


def test_the_spectrum_and_lowest_peers_and_the_split_in_the_benchmark_readme_are_the_committed_records():
    """Every cell has Spectrum's and the lowest blocks at the default's count (Spectrum's from one ranking, so a
    smaller count's blocks are inside a larger one's), and the README's tables are what the modules print."""
    from benchmarks.add_peers import peer_table

    results, text = combined(), (RESULTS.parent / "README.md").read_text()
    spectrum_sets = []
    for (task, regime), arms in report.cells(results).items():
        for seed in (0, 1, 2):
            count = len(arms["positive"][seed]["selected_layers"])
            assert arms["lowest"][seed]["selected_layers"] == list(range(count))
            spectrum_sets.append(arms["spectrum"][seed]["selected_layers"])
            assert len(spectrum_sets[-1]) == count, (task, regime, seed)
    spectrum_sets.sort(key=len)
    assert all(set(small) <= set(large) for small, large in zip(spectrum_sets, spectrum_sets[1:]))
    for line in tables(results, "positive", ["random", "spectrum", "lowest", "lora_all"]):
        assert line in text, line
    by_regime = {}
    for regime in ("learn", "overfit"):
        one = report.combined([json.loads(path.read_text()) for path in RECORDS if path.parent.name == regime])
        for line in peer_table(one, ["positive", "random", "spectrum", "lowest"])[2:]:
            pair, cells, mean, interval, record = (cell.strip() for cell in line.strip("|").split("|"))
            by_regime.setdefault(pair, []).append(f"{mean} {interval} {record}")
    for pair in ("random - lora_all", "spectrum - lora_all", "lowest - lora_all", "spectrum - random",
                 "lowest - random"):
        row = f"| {pair} | {by_regime[pair][0]} | {by_regime[pair][1]} |"
        assert row in text, row


def test_the_fourth_seeds_split_in_the_benchmark_readme_is_its_committed_records():
    """The prospective check (seed 3, default options, fixed before it ran): its table is what the module prints."""
    records = sorted((RESULTS / "default-generated-seed3").glob("*/*.json"))
    results = report.combined([json.loads(path.read_text()) for path in records])
    assert {seed for arms in report.cells(results).values() for seed in arms["flexora"]} == {3}
    text = (RESULTS.parent / "README.md").read_text()
    for line in tables(results, "flexora", ["random", "lora_all"]):
        assert line in text, line
