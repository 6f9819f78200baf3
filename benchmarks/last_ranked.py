"""The last-ranked peer for results made before `benchmarks.run` had it: LoRA on the blocks each Flexora run's score
ranks last, as many as it kept, trained as the record's own command trained its main part.

    python -m benchmarks.last_ranked RECORD.json [RECORD.json ...] --out OUT.json [--seeds 0,1]
    python -m benchmarks.report RECORD.json OUT.json      # Flexora minus the last-ranked blocks, paired by seed

Settings (profile, learning rates, precision, lengths) are parsed back from each record's `meta.command`, so a run
here is the run `Harness.main` would have made beside the record's. OUT.json holds the first record's meta and the
new runs only; it is written after every run, and a run already in it is not made again.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

from .run import Harness, Results, integers, offline_and_quiet, parse_args, write_json


def record_args(record: dict, path) -> argparse.Namespace:
    """The record's `benchmarks.run` arguments, as its command gave them."""
    command = shlex.split(record.get("meta", {}).get("command", ""))
    if "benchmarks.run" not in command:
        raise SystemExit(f"{path}: no `python -m benchmarks.run` command in its meta: not a main-part record")
    return parse_args(command[command.index("benchmarks.run") + 1:])


def flexora_runs(record: dict, path, seeds=None) -> list[dict]:
    """The record's Flexora runs of the main part (q,v), with the scores their order is read from."""
    runs = [r for r in record.get("runs", []) if r.get("arm") == "flexora" and (seeds is None or r["seed"] in seeds)]
    if not runs or any(not r.get("scores") for r in runs):
        raise SystemExit(f"{path}: no Flexora run with per-block scores{f' on seeds {seeds}' if seeds else ''}")
    return runs


def main(argv=None):
    offline_and_quiet()
    p = argparse.ArgumentParser(prog="python -m benchmarks.last_ranked", description=__doc__.split("\n\n")[0])
    p.add_argument("records", nargs="+", type=Path, help="results JSON of `benchmarks.run --parts main`")
    p.add_argument("--out", type=Path, required=True, help="results JSON of the new runs (kept and added to)")
    p.add_argument("--seeds", type=integers, default=None, help="only the Flexora runs of these seeds (default: all)")
    args = p.parse_args(argv)
    records = {path: json.loads(path.read_text()) for path in args.records}
    work = [(record_args(record, path), flexora_runs(record, path, args.seeds)) for path, record in records.items()]
    first = next(iter(records.values()))
    out = json.loads(args.out.read_text()) if args.out.exists() else {
        "meta": {**first["meta"], "last_ranked_records": [str(p) for p in args.records]},
        **{part: [] for part in Results.PARTS}}
    done = {run["key"] for run in out["runs"]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for run_args, runs in work:
        harness = None
        for flexora in runs:
            if f"{flexora['task']}/{flexora['regime']}/last_ranked/{flexora['seed']}" in done:
                continue
            harness = harness or Harness(run_args)
            out["runs"].append(harness.last_ranked_run(flexora))
            write_json(args.out, out, indent=1)
    print(f"last-ranked runs in {args.out}: {len(out['runs'])}")


if __name__ == "__main__":
    main()
