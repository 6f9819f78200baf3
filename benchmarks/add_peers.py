"""More peers in the cells of a main-part record: LoRA on blocks chosen from each Flexora run's score (or at random),
trained as the record's own command trained that cell, so they pair with its Flexora and all-block runs by seed.

    python -m benchmarks.add_peers RECORD.json [RECORD.json ...] --out OUT.json --peers last_ranked
    python -m benchmarks.add_peers RECORD.json --out OUT.json --peers top:5,random:5,top:10,random:10
    python -m benchmarks.report RECORD.json OUT.json      # Flexora minus the last-ranked blocks, paired by seed
    python -m benchmarks.add_peers RECORD.json OUT.json --out MORE.json --peers random   # an earlier OUT read too

Peers: `last_ranked` (the blocks the score ranks last, as many as Flexora kept: the main part's peer, for records made
before it had it), `positive` (the blocks the score's own `positive` rule keeps: for a run whose count came from
elsewhere, e.g. `selection_count_score`, the selection it would have made without), `top:K` (the score's K highest
blocks: a rule keeping K), `random:K` (K random blocks, the main part's first draw at that count), `all_at_kept_rate`
(LoRA on all blocks at the cell's learning rate times Flexora's kept fraction: is keeping fewer blocks a lower rate?),
`kept_at_raised_rate` (Flexora's blocks at the rate divided by that fraction: do fewer blocks learn as much at a raised
rate?), `all_at_raised_rate` (all blocks at that raised rate: is the gain the rate's?), `kept_at_kept_rate`
(Flexora's blocks at the rate times the kept fraction: with the three above, both sets on the same grid k/30, 1, 30/k
of the cell's rate), `kept_at_rate:X`, `all_at_rate:X` and `random_at_rate:X` (Flexora's blocks, all blocks, or the
first random draw of Flexora's count, at the cell's rate times X: a grid of rates for each), and the main part's own
peers of Flexora's count for records made without them, with the same blocks and keys: `random` (its draws),
`spectrum` (the data-free signal-to-noise blocks) and `lowest` (the bottom of the stack, the plain depth rule).
Settings (profile, learning rates, lengths) are parsed back from each record's `meta.command`, its precision from
`meta.precision`. OUT.json holds the first record's meta (with the machine that ran the new runs) and the new runs
only; it is written after every run, a run already in it or in a record is not made again, and the table at the end
pairs every new arm by cell.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

from flexora_trl.options import FlexoraArguments
from flexora_trl.selection import choose_blocks

from . import report
from .run import (NUM_BLOCKS, Harness, Results, bottom_blocks, highest, integers, last_ranked, machine,
                  offline_and_quiet, parse_args, peer_key, profile_of, random_blocks, random_draws, write_json)
from .stats import paired


# peer: (its blocks: Flexora's, all or the first random draw of Flexora's count; the power of Flexora's kept fraction
# that multiplies the cell's rate, or None for the spec's X: kept_at_rate:4)
RATE_PEERS = {"all_at_kept_rate": ("all", 1), "kept_at_raised_rate": ("kept", -1), "all_at_raised_rate": ("all", -1),
              "kept_at_kept_rate": ("kept", 1), "kept_at_rate": ("kept", None), "all_at_rate": ("all", None),
              "random_at_rate": ("random", None)}
SCALED_RATE_PEERS = tuple(peer for peer, (_, power) in RATE_PEERS.items() if power is None)
NAMED_PEERS = ("last_ranked", "positive", "random", "spectrum", "lowest",
               *(peer for peer in RATE_PEERS if peer not in SCALED_RATE_PEERS))
SCALED_FORMS = [f"{peer}:X" for peer in SCALED_RATE_PEERS]  # kept_at_rate:X ...


def positive_number(text: str) -> bool:
    try:
        return 0 < float(text) < float("inf")
    except ValueError:
        return False


def peers(text: str) -> list[str]:
    """`--peers`: one of NAMED_PEERS, top:K, random:K, or a rate grid's point (kept_at_rate:X...), comma-separated."""
    specs = text.split(",")
    for spec in specs:
        name, colon, count = spec.partition(":")
        if not ((name in NAMED_PEERS and not colon)
                or (name in ("top", "random") and count.isdigit() and 1 <= int(count) < NUM_BLOCKS)
                or (name in SCALED_RATE_PEERS and positive_number(count))):
            raise argparse.ArgumentTypeError(f"{spec!r}: a peer is {', '.join(NAMED_PEERS)}, top:K or random:K with "
                                             f"K from 1 to {NUM_BLOCKS - 1}, {', '.join(SCALED_FORMS[:-1])} or "
                                             f"{SCALED_FORMS[-1]} with X a positive number")
    return specs


def rate_scale(spec: str, flexora: dict) -> float | None:
    """What a rate peer multiplies the cell's rate by; None for a peer at the cell's rate."""
    name, _, factor = spec.partition(":")
    if name not in RATE_PEERS:
        return None
    power = RATE_PEERS[name][1]
    return float(factor) if power is None else (len(flexora["selected_layers"]) / NUM_BLOCKS) ** power


def peer_blocks(spec: str, flexora: dict) -> list[int]:
    """The blocks of a peer in a Flexora run's cell; its arm is named `spec` with `_` for `:` (top_5, random_5)."""
    name, _, count = spec.partition(":")
    if name == "last_ranked":
        return last_ranked(flexora["scores"], len(flexora["selected_layers"]))
    if name == "positive":  # the package's own rule with its default bounds
        return choose_blocks({int(block): value for block, value in flexora["scores"].items()}, FlexoraArguments())
    if name == "top":
        return highest(flexora["scores"], int(count))
    if name == "lowest":
        return bottom_blocks(len(flexora["selected_layers"]))
    return random_blocks(flexora["seed"], 0, int(count))


def cell_runs(spec: str, flexora: dict, draws: int) -> list[tuple[str, list[int], int | None]]:
    """(arm, blocks, draw) of each run a peer adds to a Flexora run's cell: `random` is the main part's draws; the
    blocks of `spectrum` (None here) are chosen from the model by the harness; None is every block for a rate peer
    (LoRA on all blocks, as all-block LoRA)."""
    if spec == "random":
        return [("random", blocks, draw) for draw, blocks in enumerate(random_draws(flexora, draws))]
    name = spec.partition(":")[0]
    if name in RATE_PEERS:
        blocks = {"kept": flexora["selected_layers"], "all": None, "random": random_draws(flexora, 1)[0]}
        return [(spec.replace(":", "_"), blocks[RATE_PEERS[name][0]], None)]
    if spec == "spectrum":
        return [(spec, None, None)]
    return [(spec.replace(":", "_"), peer_blocks(spec, flexora), None)]


def record_args(record: dict, path) -> argparse.Namespace:
    """The record's `benchmarks.run` arguments, as its command gave them, at the precision its runs trained in (an
    `auto` command resolves to bf16 or fp32 by the machine: a peer must pair with the record's, not this machine's)."""
    command = shlex.split(record.get("meta", {}).get("command", ""))
    if "benchmarks.run" not in command:
        raise SystemExit(f"{path}: no `python -m benchmarks.run` command in its meta: not a main-part record")
    args = parse_args(command[command.index("benchmarks.run") + 1:])
    args.precision = record["meta"].get("precision", args.precision)
    return args


def flexora_runs(record: dict, path, seeds=None) -> list[dict]:
    """The record's Flexora runs of the main part (q,v), with the scores the peers are chosen from; none in a record
    of peers alone (an earlier --out), which is read for its runs."""
    every = [r for r in record.get("runs", []) if r.get("arm") == "flexora"]
    runs = [r for r in every if seeds is None or r["seed"] in seeds]
    if every and (not runs or any(not r.get("scores") for r in runs)):
        raise SystemExit(f"{path}: no Flexora run with per-block scores{f' on seeds {seeds}' if seeds else ''}")
    return runs


def peer_table(results: dict, arms: list[str]) -> list[str]:
    """Each new arm against all-block LoRA and against Flexora, top_K against random_K and the others against the
    random peer, paired by cell."""
    found = report.cells(results)
    pairs = [(arm, "lora_all") for arm in arms] + [("flexora", arm) for arm in arms]
    pairs += [(arm, "random_" + arm.removeprefix("top_")) for arm in arms
              if arm.startswith("top_") and "random_" + arm.removeprefix("top_") in arms]
    pairs += [(arm, "random") for arm in arms if "random" in arms and arm != "random" and not arm.startswith("top_")]
    lines = ["| accuracy, points | cells | mean | 95 % interval | wins/losses |", "|---|---|---|---|---|"]
    for one, other in pairs:
        diffs = [100 * d for by_arm in found.values() for d in report.paired_differences(by_arm, other, minuend=one)]
        if diffs:
            p = paired(diffs)
            interval = f"[{p.low:+.1f}, {p.high:+.1f}]" if p.n > 1 else "-"
            lines.append(f"| {one} - {other} | {p.n} | {p.mean:+.1f} | {interval} | {p.wins}/{p.losses} |")
    return lines


def main(argv=None):
    offline_and_quiet()
    p = argparse.ArgumentParser(prog="python -m benchmarks.add_peers", description=__doc__.split("\n\n")[0])
    p.add_argument("records", nargs="+", type=Path, help="results JSON of `benchmarks.run --parts main`")
    p.add_argument("--out", type=Path, required=True, help="results JSON of the new runs (kept and added to)")
    p.add_argument("--peers", type=peers, required=True,
                   help=f"comma-separated: {', '.join([*NAMED_PEERS, 'top:K', 'random:K', *SCALED_FORMS])}")
    p.add_argument("--seeds", type=integers, default=None, help="only the Flexora runs of these seeds (default: all)")
    args = p.parse_args(argv)
    records = {path: json.loads(path.read_text()) for path in args.records}
    work = [(record_args(record, path), runs) for path, record in records.items()
            if (runs := flexora_runs(record, path, args.seeds))]
    if not work:
        raise SystemExit(f"{', '.join(map(str, args.records))}: no Flexora run with per-block scores: peers are chosen "
                         "from a main-part record's")
    first = next(iter(records.values()))
    out = json.loads(args.out.read_text()) if args.out.exists() else {
        "meta": {**first["meta"], "added_to": [str(p) for p in args.records], "machine": machine()},
        **{part: [] for part in Results.PARTS}}
    done = {run["key"] for part in [*records.values(), out] for run in part["runs"]}  # a record's own peers too
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for run_args, runs in work:
        harness, draws = None, profile_of(run_args)["random_draws"]
        for flexora in runs:
            for spec in args.peers:
                for arm, blocks, draw in cell_runs(spec, flexora, draws):
                    if peer_key(flexora, arm, draw) in done:
                        continue
                    harness = harness or Harness(run_args)
                    if arm == "spectrum":
                        run = harness.spectrum_run(flexora)
                    elif (scale := rate_scale(spec, flexora)) is not None:
                        run = harness.peer_run(flexora, arm, blocks, rate_scale=scale)
                    else:
                        run = harness.peer_run(flexora, arm, blocks, draw=draw)
                    out["runs"].append(run)
                    write_json(args.out, out, indent=1)
    arms = [spec.replace(":", "_") for spec in args.peers]
    print(*peer_table(report.combined([*records.values(), out]), arms), sep="\n")
    print(f"runs in {args.out}: {len(out['runs'])}")


if __name__ == "__main__":
    main()
