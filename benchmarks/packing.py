"""Axolotl sample packing with Flexora: the same conversations, one epoch, packed and unpacked, in one run.

    python -m benchmarks.packing                 # SmolLM2-135M, 400 demo conversations, 2 threads
    python -m benchmarks.packing --examples 100  # a quicker look

Each arm is a real `axolotl train` of the CPU recipe (`recipes/smollm2-135m-flexora-cpu.yml`) with the same fixed
Flexora search (`selected_layers` would skip it; a search of `--search-samples` examples is what a user runs), so the
fine-tune's time is the packed-vs-unpacked difference: the same tokens, fewer padded positions. The arms run one after
the other (never side by side) and the table gives the packed arm's times as ratios of the unpacked arm's.
On a CPU the attention is not masked between the conversations sharing a packed row (Axolotl warns: that needs a
packing-aware kernel such as flash attention on a GPU), so this measures throughput, not quality.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from flexora_trl.record import SelectionRecord

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "smollm2-135m-flexora-cpu.yml"
DATA = REPO / "flexora_trl" / "data" / "demo_instructions.jsonl"
RESULTS = REPO / "benchmarks" / "results" / "packing.json"


def arm_config(base: dict, packed: bool, data: str, out: Path, args) -> dict:
    cfg = dict(base, datasets=[dict(base["datasets"][0], path=data)], output_dir=str(out),
               dataset_prepared_path=str(out / "prepared"), val_set_size=0.0, sample_packing=packed,
               eval_sample_packing=packed, max_steps=None, num_epochs=1, eval_steps=None,
               micro_batch_size=1 if packed else args.batch, logging_steps=1000)
    cfg["flexora"] = dict(base["flexora"], search_samples=args.search_samples)
    return {k: v for k, v in cfg.items() if v is not None}


def run_arm(name: str, cfg: dict, workdir: Path, args) -> dict:
    path = workdir / f"{name}.yml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "AXOLOTL_DO_NOT_TRACK": "1",
           "WANDB_MODE": "disabled", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": str(args.threads),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    start = time.perf_counter()
    result = subprocess.run([str(Path(sys.executable).with_name("axolotl")), "train", str(path), "--base-model",
                             args.model], cwd=workdir, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{name}: axolotl train failed\n{result.stderr[-4000:]}")
    record = SelectionRecord.read(cfg["output_dir"])
    return {"arm": name, "sample_packing": cfg["sample_packing"], "micro_batch_size": cfg["micro_batch_size"],
            "wall_seconds": round(wall, 1), "search_seconds": record.search_seconds,
            "finetune_seconds": record.finetune_seconds, "search_inner_steps": record.search_inner_steps,
            "selected_layers": record.selected_layers}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.packing", description=__doc__.split("\n\n")[0])
    p.add_argument("--examples", type=int, default=400, help="demo conversations trained on (one epoch)")
    p.add_argument("--batch", type=int, default=8, help="unpacked micro-batch size (packed rows: 1 of 256 tokens)")
    p.add_argument("--search-samples", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--model", default=None, help="SmolLM2 directory (default: the converted cache)")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    if args.model is None:
        from flexora_trl.smollm2 import smollm2_path

        args.model = smollm2_path()
    base = yaml.safe_load(RECIPE.read_text())
    rows = DATA.read_text().splitlines()[: args.examples]
    results = []
    with tempfile.TemporaryDirectory(prefix="flexora-packing-") as tmp:
        workdir = Path(tmp)
        data = workdir / "conversations.jsonl"
        data.write_text("\n".join(rows) + "\n")
        for name, packed in (("unpacked", False), ("packed", True)):
            results.append(run_arm(name, arm_config(base, packed, str(data), workdir / name, args), workdir, args))
    unpacked = results[0]
    for r in results:
        r["finetune_ratio"] = round(r["finetune_seconds"] / unpacked["finetune_seconds"], 3)
        r["wall_ratio"] = round(r["wall_seconds"] / unpacked["wall_seconds"], 3)
    Path(args.out).write_text(json.dumps({"examples": args.examples, "threads": args.threads, "runs": results},
                                         indent=2))
    print("| arm | micro-batch | search s | fine-tune s | fine-tune / unpacked | wall s | wall / unpacked |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['arm']} | {r['micro_batch_size']} | {r['search_seconds']:.0f} | {r['finetune_seconds']:.0f} | "
              f"{r['finetune_ratio']:.2f} | {r['wall_seconds']:.0f} | {r['wall_ratio']:.2f} |")


if __name__ == "__main__":
    main()
