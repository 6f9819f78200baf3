"""What does a planted search's miss cost? A fresh LoRA on the planted blocks, on each record's top-k (the blocks its
search ranked first), on random blocks of the same count and on all blocks, trained one pass over half the planted
rows; its held-out loss per answer token on the other half, on each training seed.

    python -m benchmarks.subset_oracle benchmarks/results/planted-balanced-rows/ablation_per_token_seed1_*_set13.json
    python -m benchmarks.subset_oracle RECORD --seeds 0 --random 0 --no-all      # the record's top-k and the planted

Every record must come from the same planted job (set, targets, design, prompts): the rows are rebuilt
from the planted cache as `benchmarks.run` built them. A top-k that misses planted blocks yet fits as well as the
planted set is a miss the held-out loss does not see; the spread of a difference over the seeds is its noise.
Results: benchmarks/results/oracle/subsets_<set>_<targets>_<design>.json.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from .oracle import OUT, batches, fit_lora, held_out_loss
from .run import LORA, NUM_BLOCKS, TARGETS, integers, load_base, offline_and_quiet, planted_blocks


def read_records(paths) -> tuple[dict, dict]:
    """The planted job the records share and each record's top-k, named by its file; an error names what differs."""
    job, tops = None, {}
    for path in paths:
        record = json.loads(Path(path).read_text())
        meta, settings = record["meta"], record["meta"]["settings"]
        for entry in record.get("planted", []):
            this = {"planted_set": entry["planted_set"], "targets": entry["targets"],
                    "planted_design": meta["planted_design"], "planted_prompts": settings["planted_prompts"],
                    "n_test": settings["n_test"], "max_length": meta["max_length"]}
            differs = [key for key in this if job is not None and job[key] != this[key]]
            if differs:
                raise SystemExit(f"{path}: its planted job differs from the first record's in {', '.join(differs)} "
                                 f"({', '.join(f'{k}={this[k]!r} against {job[k]!r}' for k in differs)}); give "
                                 "records of one planted set, targets, design and prompt count")
            job = job or this
            tops[f"{Path(path).stem} (seed {entry['seed']})"] = entry["topk_selected"]
    if job is None:
        raise SystemExit("no planted result in the records given: run `python -m benchmarks.run --parts planted` first")
    return job, tops


def subset_loss(model_dir, student, lora, train, val, blocks, seed, lr):
    """Held-out loss after one pass over `train` (AdamW, `lr` decayed linearly to 0) of a fresh LoRA on `blocks`."""
    model = fit_lora(student(load_base(model_dir)), lora, blocks, train, len(train), lr, seed, scheduler="linear")
    return held_out_loss(model, val)


def main(argv=None):
    offline_and_quiet()
    p = argparse.ArgumentParser(prog="python -m benchmarks.subset_oracle", description=__doc__.split("\n\n")[0])
    p.add_argument("records", nargs="+", help="results JSON of `benchmarks.run --parts planted` (one planted job)")
    p.add_argument("--seeds", type=integers, default=[0, 1], help="training seeds of every subset's LoRA")
    p.add_argument("--random", type=int, default=2, help="random subsets of the planted count (drawn per set)")
    p.add_argument("--no-all", action="store_true", help="leave out the LoRA on all blocks")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="results JSON (default: in benchmarks/results/oracle/)")
    args = p.parse_args(argv)
    job, tops = read_records(args.records)
    torch.set_num_threads(args.threads)
    from transformers import AutoTokenizer

    from flexora_trl.smollm2 import smollm2_path

    from .planted import planted_rows
    from .tasks import load_task, task_max_length

    number, targets, planted = job["planted_set"], job["targets"], planted_blocks(job["planted_set"])
    model_dir = smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    task = load_task("hyperbaton", job["planted_prompts"], job["n_test"], tokenizer=tokenizer,
                     max_length=task_max_length("hyperbaton", job["max_length"]))  # as `Harness.planted` draws them
    lora = dict(LORA, target_modules=TARGETS[targets])
    rows, _, max_length, student = planted_rows(job["planted_design"], load_base(model_dir), tokenizer,
                                                [e.prompt for e in task.train], planted, lora, targets, number)
    half = len(rows) // 2
    train, val = batches(tokenizer, rows[:half], max_length=max_length), batches(tokenizer, rows[half:],
                                                                                 max_length=max_length)
    draws = [sorted(random.Random(f"subset-{number}-{i}").sample(range(NUM_BLOCKS), len(planted)))
             for i in range(args.random)]
    subsets = {"planted": planted, **tops, **{f"random {i}": draw for i, draw in enumerate(draws)},
               **({} if args.no_all else {"all": list(range(NUM_BLOCKS))})}
    result = {**job, "planted_blocks": planted, "records": args.records, "train_rows": half,
              "held_out_rows": len(rows) - half, "steps": len(train), "lr": args.lr, "seeds": args.seeds,
              "subsets": {name: {"blocks": blocks, "planted_in_it": len(set(blocks) & set(planted)), "loss": {}}
                          for name, blocks in subsets.items()},
              "damaged_loss": held_out_loss(student(load_base(model_dir)), val),
              "base_loss": held_out_loss(load_base(model_dir), val)}
    path = args.out or OUT / f"subsets_{number}_{targets}_{job['planted_design']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        for name, blocks in subsets.items():
            start = time.perf_counter()
            loss = subset_loss(model_dir, student, lora, train, val, blocks, seed, args.lr)
            result["subsets"][name]["loss"][str(seed)] = loss
            print(f"seed {seed} {name} {blocks}: held-out loss {loss:.5f} ({time.perf_counter() - start:.0f} s)",
                  flush=True)
            path.write_text(json.dumps(result, indent=2))
    print(f"set {number}, {targets}: damaged {result['damaged_loss']:.5f}, base {result['base_loss']:.5f}; "
          "x 1e-3 a token above the planted set's loss, per seed:")
    for name, entry in result["subsets"].items():
        above = [(entry["loss"][str(s)] - result["subsets"]["planted"]["loss"][str(s)]) * 1e3 for s in args.seeds]
        print(f"| {name} | {entry['planted_in_it']} of {len(planted)} | {', '.join(f'{a:+.1f}' for a in above)} |")
    print(path)


if __name__ == "__main__":
    main()
