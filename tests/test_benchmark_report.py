"""The benchmark's statistics, and the README's Results block: generated from the committed results.json."""

from __future__ import annotations

import json
import math
import random
import statistics
from pathlib import Path

import pytest

from benchmarks import report
from benchmarks.stats import (expected_jaccard, expected_pairwise_jaccard, heldout_rise, jaccard, paired,
                              sign_test)

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "results.json"
README = RESULTS.parent.parent.parent / "README.md"
BENCHMARK_README = RESULTS.parent.parent / "README.md"


def committed(folder: str) -> dict:
    """The records of a folder under benchmarks/results, read as one run (`report.combined`)."""
    return report.read_combined(sorted((RESULTS.parent / folder).glob("*.json")))


def words(path: Path) -> str:
    """A markdown file's text with every line break and run of spaces as one space: figures wrapped across lines."""
    return " ".join(path.read_text().split())


@pytest.mark.parametrize("sizes", [(6, 6), (12, 15), (3, 20), (30, 30)])
def test_expected_jaccard_matches_random_draws(sizes):
    rng = random.Random(0)
    draws = [jaccard(rng.sample(range(30), sizes[0]), rng.sample(range(30), sizes[1])) for _ in range(20_000)]
    assert expected_jaccard(*sizes, 30) == pytest.approx(sum(draws) / len(draws), abs=0.005)
    assert expected_pairwise_jaccard([sizes[0]] * 3, 30) == pytest.approx(expected_jaccard(sizes[0], sizes[0], 30))


def test_paired_interval_is_students_t_over_the_differences():
    p = paired([0.01, 0.03, 0.02])
    assert p.mean == pytest.approx(0.02)
    assert p.sd == pytest.approx(0.01)
    half = 4.302653 * 0.01 / math.sqrt(3)  # t(0.975, df=2)
    assert (p.low, p.high) == pytest.approx((0.02 - half, 0.02 + half), abs=1e-5)
    assert (p.wins, p.losses, p.verdict) == (3, 0, "tie")  # all three positive, but the interval holds 0
    assert paired([0.02, 0.03, 0.025]).verdict == "better"
    assert paired([-0.02, -0.03, -0.025]).verdict == "worse"


def test_sign_test_is_two_sided_binomial():
    assert sign_test(5, 0) == pytest.approx(2 / 32)
    assert sign_test(3, 3) == 1.0
    assert sign_test(9, 1) == pytest.approx(2 * 11 / 1024)


def test_heldout_rise_is_paired_over_examples_and_needs_two_standard_errors():
    rng = random.Random(0)
    base = [rng.uniform(0.5, 1.5) for _ in range(64)]
    # every example's loss falls for three epochs and then climbs back by 0.05, the same shift on every example
    shape = [0.3, 0.1, 0.0, 0.05]
    seeds = [[[b + s + rng.gauss(0, 0.01) for b in base] for s in shape] for _ in range(2)]
    rise = heldout_rise(seeds)
    assert rise.best_epoch == 3
    assert rise.rise == pytest.approx(0.05, abs=0.005)
    assert rise.stderr < 0.005 and rise.beyond_noise  # the spread of `base` cancels in the pairs
    # the same mean rise drowned in per-example noise is not told from it
    noisy = [[[b + s + rng.gauss(0, 0.5) for b in base] for s in shape] for _ in range(2)]
    assert not heldout_rise(noisy).beyond_noise


def test_every_run_names_its_task_and_regime():
    results = json.loads(RESULTS.read_text())
    assert results["runs"]
    for run in results["runs"]:
        assert run["task"] and run["regime"] in ("learn", "overfit"), run["key"]


def test_readme_results_block_is_generated_from_the_committed_json():
    results = json.loads(RESULTS.read_text())
    assert report.readme_block_of() == report.readme_block(results), (
        "README's Results block is stale: run `python -m benchmarks.report --readme`")


def test_a_planted_miss_is_measured_against_the_kth_score_in_standard_errors():
    """Planted 1 and 4 of 5 blocks (k = 2): block 1 is first, block 4 is missed; it lies (0.5 - 0.2) / hypot(0.1,
    0.1) standard errors under the 2nd score (block 0's), and its own score is 0.2 / 0.1 = 2 errors above zero."""
    from benchmarks.planted_misses import misses

    record = {"planted_blocks": [1, 4], "scores": {"0": 0.5, "1": 0.9, "2": 0.3, "3": -0.4, "4": 0.2},
              "score_stderr": {"0": 0.1, "1": 0.1, "2": 0.1, "3": 0.1, "4": 0.1}}
    (miss,) = misses(record)
    assert miss["block"] == 4 and miss["rank"] == 4
    assert miss["z_under_kth"] == pytest.approx(0.3 / math.hypot(0.1, 0.1))
    assert miss["t"] == pytest.approx(2.0)
    record["planted_blocks"] = [1, 0]
    assert misses(record) == []  # both in the top 2


def test_lowest_block_figures_in_the_readme_are_the_committed_results():
    from benchmarks.lowest_block import lowest_blocks, step_ratios

    root = RESULTS.parent
    ratios, lows = step_ratios(root), lowest_blocks(root)
    text = words(BENCHMARK_README)
    assert f"{sum(ratio <= 0.874 for _, ratio in ratios)} of the {len(ratios)} runs" in text
    assert f"{lows[0] + lows[1]} of the {sum(lows.values())} distinct selections" in text
    assert f"({sum(n for block, n in lows.items() if block >= 7)} start at block 7 or above)" in text
    rng = random.Random(0)
    draws = [min(rng.sample(range(30), 15)) for _ in range(20_000)]
    assert sum(low <= 1 for low in draws) / len(draws) == pytest.approx(1 - 15 * 14 / (30 * 29), abs=0.01)


def test_seed_agreement_tells_the_order_from_the_cut(tmp_path):
    """Seeds that keep different blocks but rank them alike agree in order (Spearman) and not at the cut (Jaccard)."""
    from benchmarks.seed_agreement import agreement, table

    order = list(range(30))

    def run(seed, scores, kept):
        return dict(task="t", search_samples=500, learning_rate=3e-4, seed=seed, selection_score="ablation",
                    alpha={str(b): scores[b] for b in order}, scores={str(b): scores[b] for b in order},
                    score_stderr={str(b): 0.1 for b in order}, selected_layers=kept)
    depth = [b / 10 for b in order]  # ascending with depth; the cut at 0.5, 1.5 or 2.5 keeps 25, 15 or 5 blocks
    runs = [run(0, depth, order[5:]), run(1, depth, order[15:]), run(2, depth, order[25:])]
    row = agreement(runs, "ablation")
    assert row["spearman"] == pytest.approx(1.0) and row["depth"] == pytest.approx(1.0)
    assert row["top_third"] == 1.0 and row["jaccard"] < 0.5
    assert row["near_cut"] == [2, 2, 2]  # blocks 0 and 1: |score| < 0.2
    gate = agreement(runs, "gate")  # alpha > 0: blocks 1-29 on every seed
    assert gate["kept"] == [29, 29, 29] and gate["jaccard"] == 1.0
    shuffled = random.Random(0).sample(depth, 30)
    assert abs(agreement([runs[0], run(1, shuffled, order[15:])], "ablation")["spearman"]) < 0.5
    path = tmp_path / "records.json"
    path.write_text(json.dumps({"budget": runs}))
    assert table([path])[2].startswith("| t | 500 | 0.0003 | 3 | gate | 29, 29, 29 | 1.00 (")


def test_seed_agreement_figures_in_the_readme_are_the_committed_records():
    from benchmarks.seed_agreement import agreement, across_tasks, flexora_runs, main_part_table, searches

    root = RESULTS.parent
    text = (root.parent / "README.md").read_text()
    found = searches(sorted((root / "budget-seeds").glob("*.json")))
    for (task, samples, rate), runs in found.items():
        if samples != 500 or len(runs) < 3:
            continue
        for score in ("gate", "ablation"):
            r = agreement(runs, score)
            label = "gate" if score == "gate" else "`ablation`"
            near = ", ".join(map(str, r.get("near_cut", []))) or "-"
            assert (f"| {task} | {rate:.0e}".replace("e-0", "e-") + f" | {label} | {r['jaccard']:.2f} "
                    f"({r['random']:.2f}) | {r['spearman']:.2f} | {r['depth']:.2f} | {near} |") in text
    for line in main_part_table(flexora_runs([RESULTS]))[2:]:
        assert line in text
    lower_rate = [runs for (_, samples, rate), runs in found.items() if (samples, rate) == (500, 3e-4)]
    flat = " ".join(text.split())
    for score in ("gate", "ablation"):
        rows = [agreement(runs, score) for runs in lower_rate]
        one = {name: statistics.fmean(row[name] for row in rows) for name in ("jaccard", "random", "spearman")}
        other = across_tasks(lower_rate, score)
        if score == "gate":
            assert (f"agree at {one['jaccard']:.2f} on the mean of the four tasks (random {one['random']:.2f}; "
                    f"Spearman {one['spearman']:.2f}), runs on different tasks at {other['jaccard']:.2f} (random "
                    f"{other['random']:.2f}; Spearman {other['spearman']:.2f})") in flat
        else:
            assert (f"at {one['jaccard']:.2f} and {other['jaccard']:.2f} (random {one['random']:.2f}, "
                    f"{other['random']:.2f}; Spearman {one['spearman']:.2f} and {other['spearman']:.2f})") in flat
    assert len(lower_rate) == 4
    unseen = main_part_table(flexora_runs([root / "unseen" / "gate.json"]))
    assert [line.split(" | ")[3] for line in unseen[2:]] == ["0.75 (0.31)", "0.75 (0.31)"]
    assert "0.75 across seeds, 0.75 across tasks (random 0.31)" in flat


def test_the_lowest_blocks_are_a_peer_paired_by_seed():
    def run(arm, seed, accuracy, layers=None):
        return {"key": f"t/learn/{arm}/{seed}", "task": "t", "regime": "learn", "arm": arm, "seed": seed,
                "accuracy": accuracy, "answer_loss": 1 - accuracy, "selected_layers": layers, "trainable_params": 1}

    runs = [run("flexora", 0, 0.60, [0, 2, 5]), run("lowest", 0, 0.50, [0, 1, 2]),
            run("flexora", 1, 0.70, [1, 2, 9]), run("lowest", 1, 0.74, [0, 1, 2])]
    results = {"meta": {"settings": {"main": [["t", "learn"]]}, "num_blocks": 30}, "runs": runs}
    row = next(line for line in report.paired_table(results) if line.startswith("| t | learn | lowest blocks |"))
    assert "| 2 | +3.0 |" in row  # (0.60 - 0.50 + 0.70 - 0.74) / 2 = +0.03
    assert any("LoRA, lowest blocks (same count)" in line for line in report.main_table(results))


def test_depth_effect_separates_a_selections_depth_from_its_choice():
    from benchmarks.depth_effect import fit

    rng = random.Random(0)

    def run(arm, blocks, seed, bonus=0.0):  # half a point per block lower, plus what the arm adds beyond its depth
        accuracy = 0.6 - 0.005 * statistics.fmean(blocks) + bonus + rng.gauss(0, 0.002)
        return {"arm": arm, "selected_layers": blocks, "accuracy": accuracy, "seed": seed}

    cells = []
    for seed in range(6):
        draws = [sorted(rng.sample(range(30), 12)) for _ in range(3)]
        cells.append([run("random", b, seed) for b in draws] + [run("lowest", list(range(12)), seed),
                                                                 run("flexora", sorted(rng.sample(range(20), 12)),
                                                                     seed, bonus=0.03)])
    fitted = fit(cells)
    assert fitted["runs"] == 30 and "spectrum" not in fitted
    assert fitted["depth"][0] == pytest.approx(-0.5, abs=0.1)
    assert fitted["flexora"][0] == pytest.approx(3.0, abs=0.5)  # the bonus, not the depth: 3 points
    assert fitted["lowest"][0] == pytest.approx(0.0, abs=0.5)  # all depth


def _overlap_with_the_lowest_blocks(runs) -> tuple[str, str]:
    """The gate's mean Jaccard with the lowest blocks of its count, and random sets' of the same sizes."""
    from benchmarks.run import NUM_BLOCKS

    selections = [r["selected_layers"] for r in runs if r["arm"] == "flexora"]
    return (f"Jaccard {statistics.fmean(jaccard(s, range(len(s))) for s in selections):.2f}",
            f"{statistics.fmean(expected_jaccard(len(s), len(s), NUM_BLOCKS) for s in selections):.2f}")


def test_depth_effect_table_in_the_benchmark_readme_is_the_committed_run():
    from benchmarks.depth_effect import table

    results = json.loads(RESULTS.read_text())
    text = BENCHMARK_README.read_text()
    assert "\n".join(table(results)) in text
    (learn, learn_random), (overfit, overfit_random) = (
        _overlap_with_the_lowest_blocks([r for r in results["runs"] if r["regime"] == regime])
        for regime in ("learn", "overfit"))
    assert (f"{learn} in the committed full run's learn regime (random sets {learn_random}), "
            f"{overfit.removeprefix('Jaccard ')} in the overfit regime ({overfit_random})") in words(BENCHMARK_README)
    assert f"({learn} with the lowest blocks of their count in the learn regime, random sets {learn_random})" in words(
        README)


def test_results_on_other_seeds_or_tasks_are_read_as_one_run():
    def part(seed, zero_shot_accuracy=0.3, task="t", learning_rate=None):
        runs = [{"key": f"{task}/learn/zero_shot", "task": task, "regime": "learn", "arm": "zero_shot", "seed": None,
                 "accuracy": zero_shot_accuracy},
                {"key": f"{task}/learn/flexora/{seed}", "task": task, "regime": "learn", "arm": "flexora",
                 "seed": seed, "accuracy": 0.5}]
        return {"meta": {"settings": {"main": [[task, "learn"]], "seeds": [seed]}, "learning_rate": learning_rate},
                "runs": runs}

    one = report.combined([part(0), part(1)])
    assert one["meta"]["settings"]["seeds"] == [0, 1]
    assert one["meta"]["learning_rate"] is None
    assert sorted(r["key"] for r in one["runs"]) == ["t/learn/flexora/0", "t/learn/flexora/1", "t/learn/zero_shot"]
    with pytest.raises(ValueError, match="t/learn/zero_shot"):
        report.combined([part(0), part(1, zero_shot_accuracy=0.4)])
    # another task, at its own rate: both tasks' cells are read, and each rate is named with its task
    two = report.combined([part(0, learning_rate=2e-3), part(0, task="u", learning_rate=5e-3),
                           part(1, task="u", learning_rate=5e-3)])
    assert report.ordered_cells(two)[0] == [("t", "learn"), ("u", "learn")]
    assert two["meta"]["learning_rate"] == "0.002 (t:learn), 0.005 (u:learn)"


@pytest.mark.parametrize("folder, regime, tasks", [
    ("depth-peer", "learn", ("addition", "middle_number")),
    ("depth-peer-overfit", "overfit", ("addition", "middle_number")),
    ("new-tasks-overfit", "overfit", ("count_words", "largest_number", "multiplication", "next_number")),
    ("new-tasks-learn", "learn", ("count_words", "largest_number", "multiplication", "next_number"))])
def test_depth_peer_figures_in_the_benchmark_readme_are_the_committed_records(folder, regime, tasks):
    from benchmarks.depth_effect import table

    results = committed(folder)
    text = words(BENCHMARK_README)
    _, found = report.ordered_cells(results)
    assert {task for task, _ in found} == set(tasks)
    peers = [(peer, label) for peer, label in report.PEERS  # the last-ranked peer came later than some records
             if all(report.paired_differences(found[task, regime], peer) for task in tasks)]
    assert {"lora_all", "random", "spectrum", "lowest"} <= {peer for peer, _ in peers}
    for peer, label in peers:
        per_task = [paired(report.paired_differences(found[task, regime], peer)) for task in tasks]
        pooled = paired([d for task in tasks for d in report.paired_differences(found[task, regime], peer)])
        row = ("| " + " | ".join(f"{100 * d.mean:+.1f}" for d in per_task) + f" | {100 * pooled.mean:+.1f} "
               f"[{100 * pooled.low:+.1f}, {100 * pooled.high:+.1f}], {pooled.wins}/{pooled.losses}")
        assert row in text, (label, row)
    overlap, random_sets = _overlap_with_the_lowest_blocks(results["runs"])
    assert f"({overlap} with the lowest k, random sets {random_sets})" in text
    fit = table(results)[2].removesuffix(" |").split(" | ")
    slope, lowest = fit[2], fit[5]
    assert f"slope of {slope} points per block, the lowest blocks {lowest} beyond" in text


@pytest.mark.parametrize("folder, count", [("new-tasks-overfit", 10), ("new-tasks-overfit", 20),
                                           ("new-tasks-learn", 20)])
def test_top_k_figures_in_the_benchmark_readme_are_the_committed_records(folder, count):
    """The score's top K against K random blocks (benchmarks.add_peers) in the new tasks' cells, seeds 0 and 1."""
    from benchmarks.add_peers import peer_table

    top, drawn = f"top_{count}", f"random_{count}"
    table = peer_table(committed(folder), [top, drawn])
    assert len(table) == 7 and f"| {top} - {drawn} | 8 |" in table[-1]
    assert "\n".join(table) in BENCHMARK_README.read_text()


@pytest.mark.parametrize("regime, cells", [("learn", 8), ("overfit", 6)])
def test_count_score_figures_in_the_benchmark_readme_are_the_committed_records(regime, cells):
    """`selection_count_score: final_taylor` (Flexora) against the gate's own selection of the same search
    (`positive`), and that selection against all-block LoRA, on the five new tasks' cells."""
    from benchmarks.add_peers import peer_table

    table = peer_table(committed(f"count-score/final-taylor-{regime}"), ["positive"])
    assert len(table) == 4 and f"| flexora - positive | {cells} |" in table[-1]
    assert "\n".join(table) in BENCHMARK_README.read_text()


@pytest.mark.parametrize("regime", ["learn", "overfit"])
def test_warm_start_figures_in_the_benchmark_readme_are_the_committed_records(regime):
    """`search_warm_start` (Flexora) against a fresh fine-tune on the same search's blocks (`positive`) and against
    all-block LoRA, eight generated tasks x 2 seeds: each task's row, the pooled table and warm minus all-block."""
    from benchmarks.add_peers import peer_table

    results = committed(f"warm-start-generated/{regime}")
    cells = report.cells(results)
    text = BENCHMARK_README.read_text()
    table = peer_table(results, ["positive"])
    assert len(table) == 4 and "| flexora - positive | 16 |" in table[-1]
    assert "\n".join(table) in text
    for (task, _), arms in cells.items():
        warm, fresh, every = ([arms[arm][seed] for seed in (0, 1)] for arm in ("flexora", "positive", "lora_all"))
        assert [run["selected_layers"] for run in warm] == [run["selected_layers"] for run in fresh]
        row = (f"| {task}, {regime} | " + ", ".join(f"{run['accuracy']:.3f}" for run in every) + " | "
               + ", ".join(f"{run['accuracy']:.3f} ({len(run['selected_layers'])})" for run in warm) + " | "
               + ", ".join(f"{run['accuracy']:.3f}" for run in fresh) + " | "
               + ", ".join(f"{w['answer_loss'] - f['answer_loss']:+.3f}" for w, f in zip(warm, fresh)) + " |")
        assert row in text, row
    d = paired([100 * x for arms in cells.values() for x in report.paired_differences(arms, "lora_all")])
    assert f"{regime} {d.mean:+.1f} [{d.low:+.1f}, {d.high:+.1f}] ({d.wins}/{d.losses})" in words(BENCHMARK_README)


@pytest.mark.parametrize("regime", ["learn", "overfit"])
def test_third_seed_and_random_peer_figures_in_the_benchmark_readme_are_the_committed_records(regime):
    """The default (F: its fresh fine-tune, the `positive` peer) against all-block LoRA and the main part's random
    peer on the eight generated tasks, seeds 0-2 (seeds 0, 1 from the warm-start records), and its blocks' agreement
    across the three seeds, per task."""
    from benchmarks.add_peers import peer_table
    from benchmarks.seed_agreement import flexora_runs, task_table

    paths = [path for folder in ("warm-start-generated", "default-generated")
             for path in sorted((RESULTS.parent / folder / regime).glob("*.json"))]
    results = report.read_combined(paths)
    cells, text = report.cells(results), BENCHMARK_README.read_text()
    assert len(cells) == 8
    for (task, _), arms in cells.items():
        assert set(arms["lora_all"]) == set(arms["positive"]) == set(arms["random"]) == {0, 1, 2}
        assert all(run["draws"] == 2 for run in arms["random"].values())
        default = arms["flexora"][2]  # seed 2 ran with the default options: the positive peer is its fine-tune
        assert not default["flexora_options"].get("search_warm_start")
        assert (default["selected_layers"], default["accuracy"]) == (arms["positive"][2]["selected_layers"],
                                                                    arms["positive"][2]["accuracy"])
        every, fresh, random_ = ([arms[arm][seed] for seed in range(3)] for arm in ("lora_all", "positive", "random"))
        assert [len(run["selected_layers"]) for run in random_] == [len(run["selected_layers"]) for run in fresh]
        row = (f"| {task}, {regime} | " + ", ".join(f"{run['accuracy']:.3f}" for run in every) + " | "
               + ", ".join(f"{run['accuracy']:.3f} ({len(run['selected_layers'])})" for run in fresh) + " | "
               + ", ".join(f"{run['accuracy']:.3f}" for run in random_) + " |")
        assert row in text, row
    table = peer_table(results, ["positive", "random"])
    for pair in ("positive - lora_all", "random - lora_all", "positive - random"):
        line = next(line for line in table if line.startswith(f"| {pair} | 24 |"))
        assert line in text, line
    for line in task_table(flexora_runs(paths))[2:]:
        assert line in text, line


@pytest.mark.parametrize("name, label", [("default", "default"), ("default_2", "default, again"),
                                         ("warm", "warm start"), ("warm_2", "warm start, again")])
def test_generated_long_run_figures_in_the_benchmark_readme_are_the_committed_records(name, label):
    """The 300-step long part on a generated task, default options and `search_warm_start`, twice each."""
    from benchmarks.lowest_block import seconds_per_step

    record = json.loads((RESULTS.parent / "long-generated" / f"{name}.json").read_text())
    arms = {run["arm"]: run for run in record["long"]}
    flexora, every = arms["flexora"], arms["lora_all"]
    step = seconds_per_step(flexora) / seconds_per_step(every)
    row = (f"| {label} | {flexora['finetune_steps']} | {flexora['search_seconds'] / flexora['finetune_seconds']:.3f} | "
           f"{report._time_ratio(flexora, every):.3f}x | {step:.3f}x | {flexora['accuracy']:.3f} "
           f"({every['accuracy']:.3f}) |")
    assert row in BENCHMARK_README.read_text()
    assert flexora["finetune_steps"] == 300 - (flexora["search_inner_steps"] if "warm" in name else 0)


def test_generated_tasks_overfit_rates_in_the_benchmark_readme_follow_the_regimes_rule():
    """Each probe's rise is read from its own held-out losses and is the README's, and the rate named is the lowest
    whose rise is beyond noise."""
    from benchmarks.calibrate import calibrated_rate

    calibration = json.loads((RESULTS.parent / "generated" / "overfit_calibration.json").read_text())
    text = words(BENCHMARK_README)
    for task, probes in calibration["tasks"].items():
        for rate, probe in probes.items():
            rise = heldout_rise([probe["item_losses"]])
            assert (probe["best_epoch"], probe["rise"], probe["stderr"]) == (rise.best_epoch, rise.rise, rise.stderr)
            assert probe["beyond_noise"] == rise.beyond_noise == (rise.rise > 2 * rise.stderr)
            assert f"{rate} {probe['rise']:+.3f} ± {probe['stderr']:.3f}" in text, (task, rate)
        lowest_rate, first = min(probes.items(), key=lambda item: float(item[0]))
        assert f"{task} {lowest_rate} {first['rise']:+.3f}" in text
        assert f"--main {task}:overfit --learning-rate {calibrated_rate(probes)}" in text


def test_overfit_replication_figures_in_the_benchmark_readme_are_the_committed_records():
    """middle_number's overfit cell on seeds 6-11 alone, and on all twelve seeds with the first six."""
    def differences(folders):
        parts = [json.loads(path.read_text()) for folder in folders for path in sorted((RESULTS.parent / folder).glob(
            "middle_number*.json"))]
        arms = report.cells(report.combined(parts))["middle_number", "overfit"]
        return {peer: paired(diffs) for peer, _ in report.PEERS if (diffs := report.paired_differences(arms, peer))}

    text = words(BENCHMARK_README)
    new = differences(["depth-peer-overfit-replication"])
    every = differences(["depth-peer-overfit", "depth-peer-overfit-replication"])
    d = new["random"]
    figure = f"random {100 * d.mean:+.1f} [{100 * d.low:+.1f}, {100 * d.high:+.1f}], {d.wins} wins, {d.losses} losses"
    assert figure in text
    for peer, label in (("random", "random"), ("lora_all", "all-block"), ("lowest", "lowest")):
        d = every[peer]
        assert f"- {label} {100 * d.mean:+.1f} [{100 * d.low:+.1f}, {100 * d.high:+.1f}] ({d.wins}/{d.losses})" in text
