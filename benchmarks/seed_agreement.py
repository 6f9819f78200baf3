"""Where seeds disagree on a selection: at the cut, or in the ranking itself. Over budget-study records of one task,
budget and rate on several training seeds, per score (the gate's alpha and the `selection_score`'s):

    python -m benchmarks.seed_agreement RECORD.json RECORD.json ...
    python -m benchmarks.seed_agreement --main [results.json ...]   # the main part's gate: across seeds, across tasks

* the Jaccard of the kept sets across seeds, and random sets' of the same sizes;
* the rank correlation (Spearman) of the 30 blocks' scores across seeds: high with a low Jaccard says the seeds agree
  on the order and split near-ties differently at the cut; near zero says the order itself is noise;
* the rank correlation of each seed's scores with depth (the block index): an agreement that is all depth is one a
  rule by depth alone (the highest or the lowest blocks) would give too;
* the Jaccard of the top third by score (a cut far from the tie-prone middle) against random sets of that size;
* for `ablation`, the blocks whose score is within two standard errors of zero (its cut): the coin flips;
* with records of several tasks, the same figures between runs on different tasks: what is not any task's own.

With `--main`, the main part's Flexora runs (the gate) of one or more records per regime: the agreement of one task's
seeds beside that of different tasks on one seed (tasks that agree as well as seeds do say the selection is the
search's, not the task's), then each task's own row.
"""

from __future__ import annotations

import itertools
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from scipy.stats import spearmanr

from .run import NUM_BLOCKS, highest
from .stats import expected_jaccard, expected_pairwise_jaccard, jaccard, mean_pairwise_jaccard


def searches(paths) -> dict:
    """(task, search samples, learning rate) -> the budget records of every seed, in the order given."""
    found = defaultdict(list)
    for path in paths:
        with open(path) as handle:
            for run in json.load(handle)["budget"]:
                found[run["task"], run["search_samples"], run["learning_rate"]].append(run)
    return found


def by_block(scores: dict) -> list[float]:
    return [scores[str(block)] for block in range(NUM_BLOCKS)]


def ranked(run: dict, score: str) -> tuple[list[float], set[int]]:
    """A run's block scores and kept blocks under `score`: `gate` reads alpha and keeps alpha > 0; otherwise the
    record's scores and its selection."""
    if score == "gate":
        values = by_block(run["alpha"])
        return values, {block for block, value in enumerate(values) if value > 0}
    return by_block(run["scores"]), set(run["selected_layers"])


def agreement(runs: list[dict], score: str) -> dict:
    """One score's agreement across the runs (seeds)."""
    values, kept = zip(*(ranked(run, score) for run in runs))
    sizes, third = [len(k) for k in kept], NUM_BLOCKS // 3
    rho = statistics.fmean(spearmanr(a, b).statistic for a, b in itertools.combinations(values, 2))
    row = dict(score=score, kept=sizes, jaccard=mean_pairwise_jaccard(kept),
               random=expected_pairwise_jaccard(sizes, NUM_BLOCKS), spearman=rho,
               depth=statistics.fmean(spearmanr(v, range(NUM_BLOCKS)).statistic for v in values),
               top_third=mean_pairwise_jaccard([highest(dict(enumerate(v)), third) for v in values]),
               top_third_random=expected_pairwise_jaccard([third] * len(values), NUM_BLOCKS))
    if score != "gate":
        row["near_cut"] = [sum(abs(run["scores"][b]) < 2 * run["score_stderr"][b] for b in run["scores"])
                           for run in runs]
    return row


def across_tasks(groups: list[list[dict]], score: str) -> dict:
    """The agreement of runs on different tasks (every pair from two groups): what the selections share that is not
    a task's own, e.g. a preference by depth."""
    pairs = [(ranked(a, score), ranked(b, score)) for one, other in itertools.combinations(groups, 2)
             for a in one for b in other]
    return dict(jaccard=statistics.fmean(jaccard(a[1], b[1]) for a, b in pairs),
                random=statistics.fmean(expected_jaccard(len(a[1]), len(b[1]), NUM_BLOCKS) for a, b in pairs),
                spearman=statistics.fmean(spearmanr(a[0], b[0]).statistic for a, b in pairs))


def table(paths) -> list[str]:
    lines = ["| task | samples | lr | seeds | score | blocks kept | Jaccard (random) | Spearman across seeds | "
             "Spearman with depth | top third: Jaccard (random) | blocks within 2 s.e. of the cut |", "|---" * 11 + "|"]
    found = searches(paths)
    for (task, samples, rate), runs in found.items():
        for score in ("gate", runs[0]["selection_score"]):
            r = agreement(runs, score)
            lines.append(f"| {task} | {samples} | {rate:g} | {len(runs)} | {score} | "
                         f"{', '.join(map(str, r['kept']))} | "
                         f"{r['jaccard']:.2f} ({r['random']:.2f}) | {r['spearman']:.2f} | {r['depth']:.2f} | "
                         f"{r['top_third']:.2f} ({r['top_third_random']:.2f}) | "
                         f"{', '.join(map(str, r.get('near_cut', []))) or '-'} |")
    by_setting = defaultdict(list)
    for (task, samples, rate), runs in found.items():
        by_setting[samples, rate].append(runs)
    for (samples, rate), groups in by_setting.items():
        scores = dict.fromkeys(["gate", *(runs[0]["selection_score"] for runs in groups)])
        for score in scores if len(groups) > 1 else ():
            r = across_tasks(groups, score)
            lines.append(f"| {len(groups)} tasks, across | {samples} | {rate:g} | - | {score} | - | "
                         f"{r['jaccard']:.2f} ({r['random']:.2f}) | {r['spearman']:.2f} | - | - | - |")
    return lines


def flexora_runs(paths) -> list[dict]:
    """The main part's Flexora runs of the records (e.g. one record per task or per seed)."""
    runs = []
    for path in paths:
        with open(path) as handle:
            runs += [run for run in json.load(handle).get("runs", []) if run["arm"] == "flexora"]
    return runs


def task_table(runs: list[dict]) -> list[str]:
    """Per task and regime, the agreement of its seeds: issue 11's stability target is read on each task."""
    lines = ["| task | regime | seeds | blocks kept | Jaccard (random) | Spearman of alpha | Spearman with depth |",
             "|---" * 7 + "|"]
    for task, regime in sorted({(run["task"], run["regime"]) for run in runs}):
        mine = sorted((run for run in runs if (run["task"], run["regime"]) == (task, regime)), key=lambda r: r["seed"])
        if len(mine) > 1:
            r = agreement(mine, "gate")
            lines.append(f"| {task} | {regime} | {', '.join(str(run['seed']) for run in mine)} | "
                         f"{', '.join(map(str, r['kept']))} | {r['jaccard']:.2f} ({r['random']:.2f}) | "
                         f"{r['spearman']:.2f} | {r['depth']:.2f} |")
    return lines


def main_part_table(runs: list[dict]) -> list[str]:
    """Per regime, one task's seeds against different tasks on one seed (`flexora_runs` gives the runs)."""
    lines = ["| regime | compared | groups | Jaccard (random) | Spearman of alpha | Spearman with depth |",
             "|---" * 6 + "|"]
    for regime in sorted({run["regime"] for run in runs}):
        mine = [run for run in runs if run["regime"] == regime]
        for compared, key in (("seeds of one task", "task"), ("tasks on one seed", "seed")):
            groups = [[run for run in mine if run[key] == value] for value in sorted({run[key] for run in mine})]
            groups = [group for group in groups if len(group) > 1]
            if not groups:
                continue
            rows = [agreement(group, "gate") for group in groups]
            mean = {name: statistics.fmean(row[name] for row in rows)
                    for name in ("jaccard", "random", "spearman", "depth")}
            lines.append(f"| {regime} | {compared} | {len(groups)} | {mean['jaccard']:.2f} ({mean['random']:.2f}) | "
                         f"{mean['spearman']:.2f} | {mean['depth']:.2f} |")
    return lines


def main(argv=None):
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--main"]:
        paths = args[1:] or [Path(__file__).resolve().parent / "results" / "results.json"]
        runs = flexora_runs(paths)
        print("\n".join(main_part_table(runs)), "", "\n".join(task_table(runs)), sep="\n")
    else:
        print("\n".join(table(args)))


if __name__ == "__main__":
    main()
