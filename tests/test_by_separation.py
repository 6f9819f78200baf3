"""Flexora's pairs split by its search's noise check, read from the committed third-seed records (48 cells), and the
gate's top 20 against the default's own blocks in the same cells and a fourth seed (the same module's tables), the
rate peers, and the rate grid's best rates (`benchmarks.best_rate`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import report
from benchmarks.best_rate import tables as best_rate_tables
from benchmarks.by_separation import flagged_differences, main, tables
from benchmarks.stats import paired

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
RECORDS = sorted((RESULTS / "warm-start-generated").glob("*/*.json")) + sorted(
    (RESULTS / "default-generated").glob("*/*.json"))


def combined():
    return report.read_combined(RECORDS)


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
        one = report.read_combined(path for path in RECORDS if path.parent.name == regime)
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
    results = report.read_combined(records)
    assert {seed for arms in report.cells(results).values() for seed in arms["flexora"]} == {3}
    text = (RESULTS.parent / "README.md").read_text()
    for line in tables(results, "flexora", ["random", "lora_all"]):
        assert line in text, line


TOP_20 = RESULTS / "top-20"
FOUR_SEEDS = [*RECORDS, *sorted((RESULTS / "default-generated-seed3").glob("*/*.json"))]  # the 64 cells' records


def top_20_results() -> dict:
    """The 64 cells of four seeds with their top_20, random_20 and (seed 3) positive peers, read as one run."""
    records = [*FOUR_SEEDS, *sorted(TOP_20.glob("learn/*.json")), *sorted(TOP_20.glob("overfit/*.json"))]
    return report.read_combined(records)


def test_the_top_20_study_in_the_benchmark_readme_is_its_committed_records():
    """The gate's 20 highest blocks (top_20) in the 64 cells of four seeds: each is its cell's search's 20 highest
    alpha, the default's own blocks (`positive`) are in every cell, and the README's table is what the module prints."""
    from benchmarks.run import highest

    results = top_20_results()
    found = report.cells(results)
    assert len(found) == 16
    for arms in found.values():
        assert set(arms["top_20"]) == set(arms["positive"]) == set(arms["lora_all"]) == {0, 1, 2, 3}
        for seed, run in arms["top_20"].items():
            assert run["selected_layers"] == highest(arms["flexora"][seed]["scores"], 20)
    text = (RESULTS.parent / "README.md").read_text()
    for line in tables(results, "top_20", ["positive", "lora_all", "random_20"]):
        assert line in text, line


def test_the_top_20_on_two_other_tasks_in_the_benchmark_readme_is_its_committed_records():
    """The same peer on the depth-peer records (addition, middle_number; their Flexora arm is the default of its
    time): the README's table is what the module prints."""
    records = [*sorted((RESULTS / "depth-peer").glob("seeds*.json")),
               *(RESULTS / "depth-peer-overfit" / name for name in
                 ("addition.json", "middle_number_seed5.json", "middle_number_seeds0-4.json")),
               *sorted((RESULTS / "depth-peer-overfit-replication").glob("*.json")),
               *sorted((TOP_20 / "depth-peer").glob("*.json"))]
    results = report.read_combined(records)
    assert sum(len(arms["top_20"]) for arms in report.cells(results).values()) == 30
    text = (RESULTS.parent / "README.md").read_text()
    for line in tables(results, "top_20", ["flexora", "lora_all"]):
        assert line in text, line
    # the two tables' differences joined (the default's half is `positive` in the 64 cells, `flexora` here)
    cells64 = top_20_results()
    joined = {name: flagged_differences(cells64, "top_20", first) + flagged_differences(results, "top_20", other)
              for name, first, other in (("half", "positive", "flexora"), ("all", "lora_all", "lora_all"))}
    figures = {(name, regime): paired([d for _, r, _, d in rows if regime in (r, "both")])
               for name, rows in joined.items() for regime in ("learn", "overfit", "both")}
    assert [figures["half", regime].n for regime in ("learn", "overfit", "both")] == [44, 50, 94]
    words = " ".join(text.split())
    interval = "{0.mean:+.1f} [{0.low:+.1f}, {0.high:+.1f}]".format
    assert (f"top 20 - the default's half {interval(figures['half', 'learn'])} where the fine-tune learns (44 cells), "
            f"{interval(figures['half', 'overfit'])} where it overfits (50), {interval(figures['half', 'both'])} over "
            f"both; top 20 - all-block LoRA {interval(figures['all', 'learn'])} and "
            f"{interval(figures['all', 'overfit']).split(' [')[0]} [") in words


RATE_PEERS = RESULTS / "rate-peers"


def rate_peer_results() -> dict:
    """The 64 cells of four seeds with the default's own blocks in every cell and the rate peers, read as one run."""
    records = [*FOUR_SEEDS, *sorted(TOP_20.glob("*/positive3_*.json")), *sorted(RATE_PEERS.glob("*/*.json"))]
    return report.read_combined(records)


def assert_at_their_rates(found: dict, half: str, peers) -> None:
    """Each (arm, power, on the half's blocks) peer on every seed of the `half` arm in every cell: the half's blocks,
    or every block, at the cell's all-block rate times the half's kept fraction to that power."""
    for arms in found.values():
        for arm, power, on_kept in peers:
            assert set(arms[arm]) == set(arms[half]), arm
            for seed, run in arms[arm].items():
                kept = arms[half][seed]["selected_layers"]
                assert run["learning_rate"] == pytest.approx(
                    arms["lora_all"][seed]["learning_rate"] * (len(kept) / 30) ** power)
                assert run["selected_layers"] == (kept if on_kept else None)


def test_the_rate_peers_in_the_benchmark_readme_are_their_committed_records():
    """all_at_kept_rate (every block), kept_at_raised_rate (the default's own) and all_at_raised_rate (every block,
    the learn cells) at the cell's all-block rate times, or divided by, the default's kept fraction, in every cell of
    four seeds: the README's tables and figures are what the module prints."""
    results = rate_peer_results()
    found = report.cells(results)
    assert len(found) == 16
    for (_, regime), arms in found.items():
        assert set(arms["positive"]) == {0, 1, 2, 3}, regime
        peers = [("all_at_kept_rate", 1, False), ("kept_at_raised_rate", -1, True)]
        if regime == "learn":
            peers.append(("all_at_raised_rate", -1, False))
        assert_at_their_rates({regime: arms}, "positive", peers)
    text = (RESULTS.parent / "README.md").read_text()
    for minuend, peers in (("positive", ["all_at_kept_rate", "kept_at_raised_rate", "lora_all"]),
                           ("kept_at_raised_rate", ["lora_all", "all_at_raised_rate"])):
        for line in tables(results, minuend, peers):
            assert line in text, line
    words = " ".join(text.split())
    for one, other, regime, label in (("all_at_kept_rate", "lora_all", "learn", "P - A"),
                                      ("random", "all_at_kept_rate", "learn", "R - P"),
                                      ("all_at_kept_rate", "lora_all", "overfit", "P - A"),
                                      ("kept_at_raised_rate", "positive", "overfit", "Q - F")):
        p = paired([d for _, r, _, d in flagged_differences(results, one, other) if r == regime])
        assert f"{label} {p.mean:+.1f} [{p.low:+.1f}, {p.high:+.1f}] ({regime}, {p.n} cells)" in words


def test_the_rate_grid_in_the_benchmark_readme_is_its_committed_records():
    """The default's blocks and all blocks at 4 and 8 times the cell's rate in every learn cell of four seeds, and the
    README's best-rate tables are what `benchmarks.best_rate` prints from them with the rate peers."""
    grid = sorted((RESULTS / "rate-grid").glob("learn/x*.json"))
    results = report.read_combined([*FOUR_SEEDS, *sorted(TOP_20.glob("learn/positive3_*.json")),
                                    *sorted(RATE_PEERS.glob("learn/*.json")), *grid])
    found = {cell: arms for cell, arms in report.cells(results).items() if cell[1] == "learn"}
    assert len(found) == 8
    factors = sorted({float(path.stem.split("_")[0].removeprefix("x")) for path in grid})
    for arms in found.values():
        for factor in factors:
            for arm, on_kept in ((f"kept_at_rate_{factor:g}", True), (f"all_at_rate_{factor:g}", False)):
                assert set(arms[arm]) == {0, 1, 2, 3}, arm
                for seed, run in arms[arm].items():
                    assert run["learning_rate"] == pytest.approx(arms["lora_all"][seed]["learning_rate"] * factor)
                    assert run["selected_layers"] == (arms["positive"][seed]["selected_layers"] if on_kept else None)
    text = (RESULTS.parent / "README.md").read_text()
    rates = [f"_at_rate_{factor:g}" for factor in factors]
    for top in range(len(factors) + 1):  # the grid up to each factor: its pooled row, and every line of the whole grid
        kept = ["positive", "kept_at_raised_rate", *("kept" + rate for rate in rates[:top])]
        every = ["lora_all", "all_at_raised_rate", *("all" + rate for rate in rates[:top])]
        lines = best_rate_tables(results, kept, every)
        for line in lines if top == len(factors) else lines[-1:]:
            assert line in text, line


def test_random_blocks_at_four_times_the_rate_in_the_benchmark_readme_are_their_committed_records():
    """The main part's first random draw of the default's count at 4 times the cell's rate in every learn cell of four
    seeds, and the README's table of the default's blocks against it is what the module prints."""
    records = [*FOUR_SEEDS, *sorted(TOP_20.glob("learn/positive3_*.json")),
               *sorted((RESULTS / "rate-grid").glob("learn/*.json"))]
    results = report.read_combined(records)
    first_draws = {run["key"].replace("/random/", "/random_at_rate_4/").removesuffix("/0"): run["selected_layers"]
                   for run in results["runs"] if run["arm"] == "random" and run.get("draw") == 0}
    found = {cell: arms for cell, arms in report.cells(results).items() if cell[1] == "learn"}
    assert len(found) == 8
    for arms in found.values():
        assert set(arms["random_at_rate_4"]) == {0, 1, 2, 3}
        for seed, run in arms["random_at_rate_4"].items():
            assert run["selected_layers"] == first_draws[run["key"]]
            assert len(run["selected_layers"]) == len(arms["positive"][seed]["selected_layers"])
            assert run["learning_rate"] == pytest.approx(arms["lora_all"][seed]["learning_rate"] * 4)
    text = (RESULTS.parent / "README.md").read_text()
    for line in tables(results, "kept_at_rate_4", ["random_at_rate_4", "all_at_rate_4"]):
        assert line in text, line


def test_the_overfit_rate_grid_in_the_benchmark_readme_is_its_committed_records():
    """The default's blocks at the cell's rate times its kept fraction and all blocks at the rate divided by it, in
    every overfit cell of four seeds: with the rate peers, both sets on the grid k/30, 1, 30/k, and the README's table
    is what `benchmarks.best_rate` prints."""
    records = [*(path for path in FOUR_SEEDS if path.parent.name == "overfit"),
               *sorted(TOP_20.glob("overfit/positive3_*.json")), *sorted(RATE_PEERS.glob("overfit/*.json")),
               *sorted((RESULTS / "rate-grid").glob("overfit/*.json"))]
    results = report.read_combined(records)
    found = report.cells(results)
    assert len(found) == 8 and {regime for _, regime in found} == {"overfit"}
    assert all(set(arms["positive"]) == {0, 1, 2, 3} for arms in found.values())
    assert_at_their_rates(found, "positive", (("kept_at_kept_rate", 1, True), ("all_at_raised_rate", -1, False)))
    text = (RESULTS.parent / "README.md").read_text()
    lines = best_rate_tables(results, ["kept_at_kept_rate", "positive", "kept_at_raised_rate"],
                             ["all_at_kept_rate", "lora_all", "all_at_raised_rate"])
    for line in lines:
        assert line in text, line
    check = json.loads((RESULTS / "rate-grid" / "machine-check" / "rounding_overfit_seed0_bf16.json").read_text())
    here, there = {run["arm"]: run["accuracy"] for run in check["runs"]}, found["rounding", "overfit"]
    assert check["meta"]["machine"]["cpu"] != results["meta"]["machine"]["cpu"]  # the cell retrained elsewhere
    words = " ".join(text.split())
    assert (f"gave {here['kept_at_rate_1']:.3f} and {here['all_at_rate_1']:.3f} against the records' "
            f"{there['positive'][0]['accuracy']:.3f} and {there['lora_all'][0]['accuracy']:.3f}") in words


def test_the_overfit_rate_grid_on_two_more_tasks_in_the_benchmark_readme_is_its_committed_records():
    """The same four rate peers in s48's overfit cells of addition (6 seeds) and middle_number (12), fp32 as those
    records: every seed has them, at the cell's rate times k/30 or 30/k; the README's table is what `best_rate`
    prints; and fp32 gave the records' accuracies on the other machine."""
    records = [RESULTS / "depth-peer-overfit" / "addition.json",
               *sorted((RESULTS / "depth-peer-overfit").glob("middle_number_*.json")),
               *sorted((RESULTS / "depth-peer-overfit-replication").glob("middle_number_*.json")),
               *sorted((RESULTS / "rate-grid").glob("overfit-other-tasks/*.json"))]
    results = report.read_combined(records)
    found = report.cells(results)
    assert {cell: len(arms["flexora"]) for cell, arms in found.items()} == {("addition", "overfit"): 6,
                                                                           ("middle_number", "overfit"): 12}
    assert_at_their_rates(found, "flexora", (("kept_at_kept_rate", 1, True), ("kept_at_raised_rate", -1, True),
                                             ("all_at_kept_rate", 1, False), ("all_at_raised_rate", -1, False)))
    text = (RESULTS.parent / "README.md").read_text()
    for line in best_rate_tables(results, ["kept_at_kept_rate", "flexora", "kept_at_raised_rate"],
                                 ["all_at_kept_rate", "lora_all", "all_at_raised_rate"]):
        assert line in text, line
    check = json.loads((RESULTS / "rate-grid" / "machine-check" / "addition_overfit_seed0_fp32.json").read_text())
    here, there = {run["arm"]: run for run in check["runs"]}, found["addition", "overfit"]
    assert check["meta"]["machine"]["cpu"] != results["meta"]["machine"]["cpu"] and check["meta"]["precision"] == "fp32"
    for arm, record_arm in (("kept_at_rate_1", "flexora"), ("all_at_rate_1", "lora_all")):
        assert here[arm]["accuracy"] == there[record_arm][0]["accuracy"]
        assert here[arm]["answer_loss"] == pytest.approx(there[record_arm][0]["answer_loss"], abs=2e-5)
