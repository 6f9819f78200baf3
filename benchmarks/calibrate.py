"""The overfit regime's learning rate for a task it has none for, by the regime's own rule (run.py, REGIMES): the lowest
of the probed rates at which all-block LoRA's held-out answer loss rises from its best epoch to the last beyond noise.

    python -m benchmarks.calibrate addition middle_number --out benchmarks/results/generated/overfit_calibration.json

One probe per task and rate: all-block LoRA, seed 0, the overfit regime's training set and epochs, the held-out answer
loss of the first CURVE_EXAMPLES test examples after every epoch. Probes already in `--out` are kept and not run again
(the file is written after every probe), so a second task or rate adds to a record instead of replacing it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .run import CURVE_EXAMPLES, PROFILES, Harness, offline_and_quiet, parse_args, profile_of, write_json
from .stats import heldout_rise

RATES = ("1e-3", "2e-3", "5e-3")
SEED = 0


def rule(profile: str) -> str:
    overfit = profile_of(parse_args(["--profile", profile]))["regimes"]["overfit"]
    return (f"the lowest probed rate at which all-block LoRA's held-out answer loss (first {CURVE_EXAMPLES} test "
            f"examples, after each of {overfit['epochs']} epochs, seed {SEED}, the overfit regime's "
            f"{overfit['n_train']} training examples) rises from its best epoch to the last by more than two "
            "standard errors (every rate is probed)")


def probe_record(run: dict) -> dict:
    """A probe as the record keeps it: the curve, its rise with the rule's reading, and the item losses it came from."""
    rise = heldout_rise([run["heldout_item_losses"]])
    return {"curve": run["heldout_loss_per_epoch"], "best_epoch": rise.best_epoch, "rise": rise.rise,
            "stderr": rise.stderr, "beyond_noise": rise.beyond_noise, "accuracy": run["accuracy"],
            "answer_loss": run["answer_loss"], "item_losses": run["heldout_item_losses"]}


def calibrated_rate(probes: dict[str, dict]) -> str | None:
    """The lowest rate whose rise is beyond noise; None when none is (the task has no overfit regime at these rates)."""
    return min((rate for rate, probe in probes.items() if probe["beyond_noise"]), key=float, default=None)


def parse(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.calibrate", description=__doc__.split("\n\n")[0])
    p.add_argument("tasks", nargs="+", help="multiple-choice tasks of the benchmark, e.g. a generated one "
                                            "(benchmarks/generated.py)")
    p.add_argument("--rates", default=",".join(RATES),
                   help=f"comma-separated learning rates (default {','.join(RATES)})")
    p.add_argument("--profile", choices=sorted(PROFILES), default="dev",
                   help="the benchmark profile whose overfit sizes and test split are used (default dev)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--out", required=True, help="the record (JSON); probes already in it are kept")
    args = p.parse_args(argv)
    args.rates = args.rates.split(",")
    try:
        positive = all(float(rate) > 0 for rate in args.rates)
    except ValueError:
        positive = False
    if not positive:
        p.error(f"--rates: give comma-separated positive numbers, e.g. {','.join(RATES)}")
    return args


def main(argv=None):
    offline_and_quiet()
    args = parse(argv)
    out = Path(args.out)
    sizes = rule(args.profile)
    record = json.loads(out.read_text()) if out.exists() else {"rule": sizes, "tasks": {}}
    if record["rule"] != sizes:
        raise SystemExit(f"--out {out}: its probes were made with other sizes than --profile {args.profile}'s "
                         f"({record['rule']}); give another --out or the profile they were made with.")
    check = Harness(parse_args(["--profile", args.profile, "--threads", str(args.threads)]))
    for task in args.tasks:  # a missing or too small task stops here, before any probe trains
        check.task(task, check.profile["regimes"]["overfit"]["n_train"])
    for task in args.tasks:
        probes = record["tasks"].setdefault(task, {})
        for rate in args.rates:
            if rate in probes:
                print(f"{task} {rate}: kept from {out}", flush=True)
                continue
            harness = Harness(parse_args(["--profile", args.profile, "--main", f"{task}:overfit",
                                          "--learning-rate", rate, "--threads", str(args.threads)]))
            run = harness.regime_run(f"{task}/overfit/lora_all/{SEED}", task, "overfit", SEED, "lora_all", curve=True)
            probes[rate] = probe_record(run)
            write_json(out, record, indent=1)
    print("| task | rate | best epoch | rise +- s.e. | beyond noise | accuracy |\n|---|---|---|---|---|---|")
    for task in args.tasks:
        for rate, p in sorted(record["tasks"][task].items(), key=lambda item: float(item[0])):
            print(f"| {task} | {rate} | {p['best_epoch']} | {p['rise']:+.3f} +- {p['stderr']:.3f} | "
                  f"{'yes' if p['beyond_noise'] else 'no'} | {p['accuracy']:.3f} |")
    for task in args.tasks:
        rate = calibrated_rate(record["tasks"][task])
        print(f"{task}: " + (f"--main {task}:overfit --learning-rate {rate}" if rate else
                             "no rise beyond noise at these rates: no overfit regime here"))
    print(f"JSON: {out}")


if __name__ == "__main__":
    main()
