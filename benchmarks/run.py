"""Flexora vs LoRA on SmolLM2-135M-Instruct and real BIG-bench multiple-choice tasks, side by side in one run.

    python -m benchmarks.run --quick          # smoke run, a few minutes
    python -m benchmarks.run                  # the full benchmark (about 80 min on 2 cores, 2 worker processes)

For every task and seed, with the same data, seed, steps and LoRA settings: (a) LoRA on all blocks (TRL SFTTrainer),
(b) Flexora (FlexoraSFTTrainer, first-order hypergradient), (c) LoRA on a random set of as many blocks as Flexora kept
(`layers_to_transform`), (d) the zero-shot base model; plus Flexora with the unrolled hypergradient, planted-layer
recovery on the real model, a search-budget study and the fine-tune speed of a high selection. The work is split
into jobs run by `--workers` processes (one torch thread each, a fresh process per job); results are written after
every job (`benchmarks/results/results.json`, `results.md`, `results.png`), so an interrupted run leaves its partial
results, and `--resume` skips the jobs already in the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

RESULTS_DIR = Path(__file__).resolve().parent / "results"

PROFILES = {
    # Smoke run: one task, one seed, tiny budgets. Checks the whole pipeline end to end.
    "quick": dict(tasks=["hyperbaton"], seeds=[0], n_train=96, n_test=48, max_steps=6, search_samples=32,
                  holdout=24, unroll=[1], planted_samples=64, planted_prompts=120, budgets=[32, 64],
                  budget_task="hyperbaton", speed_steps=3),
    # Full run: sized for well under 2 h on 2 cores with 2 workers (see benchmarks/README.md).
    "full": dict(tasks=["hyperbaton", "intent_recognition"], seeds=[0, 1, 2], n_train=256, n_test=200, max_steps=48,
                 search_samples=192, holdout=64, unroll=[1], planted_samples=192, planted_prompts=256,
                 budgets=[250, 500, 1000, 2000], budget_task="hyperbaton", speed_steps=12),
}
SPEED_BLOCKS = list(range(15, 30))  # the upper half: the fine-tune needs no backward below block 15
LORA = dict(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
PLANTED_BLOCKS = [3, 4, 5, 18, 19, 20]


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run (a few minutes)")
    p.add_argument("--tasks", help="comma-separated BIG-bench task names (default: the profile's)")
    p.add_argument("--seeds", help="comma-separated training seeds (default: 0,1,2; --quick: 0)")
    p.add_argument("--max-steps", type=int, help="fine-tune optimizer steps (default: the profile's)")
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="processes running jobs side by side (default 2)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per worker (default 1)")
    p.add_argument("--out", default=None, help="results directory (default benchmarks/results, quick: .../quick)")
    p.add_argument("--resume", action="store_true", help="keep the jobs already in the results JSON")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: main,unrolled,planted,budget,speed")
    return p.parse_args(argv)


def profile_of(args) -> dict:
    profile = dict(PROFILES["quick" if args.quick else "full"])
    if args.tasks:
        profile["tasks"] = args.tasks.split(",")
        profile["budget_task"] = profile["tasks"][0]
    if args.seeds:
        profile["seeds"] = [int(s) for s in args.seeds.split(",")]
    if args.max_steps:
        profile["max_steps"] = args.max_steps
    return profile


# ------------------------------------------------------------------------------------------------ helpers
def load_base(model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)


def make_config(flexora: bool, output_dir: str, seed: int, steps: int, lr: float, max_length: int,
                gradient_checkpointing: bool = False, **flexora_opts):
    """The same settings for every arm. Gradient checkpointing is off (a 135M model at 64 tokens has no memory to
    save, and it costs a third more compute) except in the speed job, which measures TRL's default."""
    from trl import SFTConfig

    from flexora_trl import FlexoraSFTConfig

    common = dict(output_dir=output_dir, max_steps=steps, per_device_train_batch_size=8, per_device_eval_batch_size=8,
                  learning_rate=lr, lr_scheduler_type="constant", warmup_steps=0, max_length=max_length,
                  logging_steps=10_000, save_strategy="no", report_to="none", use_cpu=True, bf16=False, seed=seed,
                  data_seed=seed, disable_tqdm=True, dataset_num_proc=None,
                  gradient_checkpointing=gradient_checkpointing)
    if flexora:
        return FlexoraSFTConfig(**common, **flexora_opts)
    return SFTConfig(**common)


def jaccard(a, b) -> float:
    a, b = set(a), set(b)
    return len(a & b) / max(1, len(a | b))


class Harness:
    """Runs one job in a worker process; its results are returned to the parent, which owns the JSON."""

    def __init__(self, args):
        import torch

        torch.set_num_threads(args.threads)
        from flexora_trl.smollm2 import smollm2_path
        from transformers import AutoTokenizer

        self.args = args
        self.profile = profile_of(args)
        self.model_dir = smollm2_path()
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.tasks = {}
        self.results = {"runs": [], "planted": [], "budget": [], "speed": []}
        self.tmp = tempfile.mkdtemp(prefix="flexora-bench-")

    def task(self, name, n_train=None):
        from .tasks import load_task

        p = self.profile
        n_train = n_train or p["n_train"]
        if (name, n_train) not in self.tasks:
            self.tasks[name, n_train] = load_task(name, n_train, p["n_test"], tokenizer=self.tokenizer,
                                                  max_length=self.args.max_length)
        return self.tasks[name, n_train]

    def find(self, key):
        return next((r for r in self.results["runs"] if r["key"] == key), None)

    # -------------------------------------------------------------------------------------------- one training run
    def train_and_eval(self, key, task_name, seed, arm, layers=None, flexora_opts=None, train_rows=None,
                       steps=None, evaluate=True, gradient_checkpointing=False):
        from datasets import Dataset
        from peft import LoraConfig
        from transformers import TrainerCallback
        from trl import SFTTrainer

        from flexora_trl import FlexoraSFTTrainer
        from flexora_trl.adapter import count_trainable

        from .memory import PeakRSS
        from .scoring import score_multiple_choice
        from .tasks import to_sft_rows

        task = self.task(task_name) if task_name else None
        rows = train_rows if train_rows is not None else to_sft_rows(task.train)
        out_dir = os.path.join(self.tmp, key.replace("/", "_"))
        flexora = flexora_opts is not None
        steps = steps or self.profile["max_steps"]
        config = make_config(flexora, out_dir, seed, steps, self.args.learning_rate, self.args.max_length,
                             gradient_checkpointing, **(flexora_opts or {}))
        lora_kwargs = dict(LORA)
        if layers is not None:
            lora_kwargs.update(layers_to_transform=sorted(layers), layers_pattern="layers")
        tracker = PeakRSS()
        phase = {}

        class Measure(TrainerCallback):
            def on_train_begin(self, *a, **k):
                tracker.start()
                phase["finetune_start"] = time.perf_counter()

            def on_train_end(self, *a, **k):
                phase["finetune_seconds"] = time.perf_counter() - phase["finetune_start"]
                phase["memory"] = tracker.stop()

        model = load_base(self.model_dir)
        cls = FlexoraSFTTrainer if flexora else SFTTrainer
        trainer = cls(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=self.tokenizer,
                      peft_config=LoraConfig(**lora_kwargs), callbacks=[Measure()])
        start = time.perf_counter()
        trainer.train()
        total = time.perf_counter() - start
        record = getattr(trainer, "flexora_record", None) if flexora else None
        losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
        result = {
            "key": key, "task": task_name, "seed": seed, "arm": arm,
            "trainable_params": count_trainable(trainer.model),
            "train_seconds_total": round(total, 2),
            "search_seconds": round(record["search_seconds"], 2) if record else 0.0,
            "finetune_seconds": round(phase["finetune_seconds"], 2),
            "finetune_steps": steps, "gradient_checkpointing": gradient_checkpointing,
            **phase["memory"],
            "selected_layers": sorted(record["selected_layers"]) if record else (sorted(layers) if layers else None),
            "train_loss_last": losses[-1] if losses else None,
        }
        if record:
            result.update(alpha=record.get("alpha"), lora_params_all_blocks=record["lora_params_all_blocks"],
                          search_inner_steps=record.get("search_inner_steps"),
                          search_outer_steps=record.get("search_outer_steps"),
                          hypergradient=flexora_opts.get("hypergradient", "first_order"),
                          unroll_steps=flexora_opts.get("unroll_steps"))
        if evaluate:
            result.update(score_multiple_choice(trainer.model, self.tokenizer, task.test))
        del trainer, model
        print(f"[{time.strftime('%H:%M:%S')}] {key}: " + json.dumps({k: v for k, v in result.items() if k != "alpha"}),
              flush=True)
        return result

    def flexora_opts(self, **extra):
        p = self.profile
        return {"search_samples": p["search_samples"], "search_holdout_samples": p["holdout"],
                "search_val_batches": 1, **extra}

    # -------------------------------------------------------------------------------------------- the jobs
    def zero_shot(self, task_name):
        from .scoring import score_multiple_choice

        task = self.task(task_name)
        self.results["runs"].append({
            "key": f"{task_name}/zero_shot", "task": task_name, "seed": None, "arm": "zero_shot",
            "trainable_params": 0, **score_multiple_choice(load_base(self.model_dir), self.tokenizer, task.test),
            "chance": task.chance, "n_train": len(task.train)})

    def main_arms(self, task_name, seed):
        import random

        runs = self.results["runs"]
        runs.append(self.train_and_eval(f"{task_name}/lora_all/{seed}", task_name, seed, "lora_all"))
        flexora = self.train_and_eval(f"{task_name}/flexora/{seed}", task_name, seed, "flexora",
                                      flexora_opts=self.flexora_opts())
        runs.append(flexora)
        layers = sorted(random.Random(10_000 + seed).sample(range(30), len(flexora["selected_layers"])))
        runs.append(self.train_and_eval(f"{task_name}/random/{seed}", task_name, seed, "random", layers=layers))

    def unrolled(self, task_name, seed, k):
        opts = self.flexora_opts(hypergradient="unrolled", unroll_steps=k)
        self.results["runs"].append(self.train_and_eval(f"{task_name}/flexora_unrolled_k{k}/{seed}", task_name, seed,
                                                        f"flexora_unrolled_k{k}", flexora_opts=opts))

    def planted(self):
        """Teacher = SmolLM2 + a random LoRA delta on PLANTED_BLOCKS; it answers prompts greedily, and the search
        runs on (prompt, teacher answer) pairs. Precision/recall of the selection against the planted blocks."""
        from .planted import teacher_rows

        p = self.profile
        prompts = [e.prompt for name in p["tasks"] for e in self.task(name).train + self.task(name).test]
        prompts = prompts[: p["planted_prompts"]]
        start = time.perf_counter()
        rows, teacher_info = teacher_rows(load_base(self.model_dir), self.tokenizer, prompts, PLANTED_BLOCKS, LORA)
        gen_seconds = time.perf_counter() - start
        planted = set(PLANTED_BLOCKS)
        opts = self.flexora_opts(search_samples=p["planted_samples"])
        result = self.train_and_eval("planted/first_order", None, 0, "planted_first_order", flexora_opts=opts,
                                     train_rows=rows, steps=1, evaluate=False)
        sel = set(result["selected_layers"])
        alpha = {int(b): a for b, a in result["alpha"].items()}
        top = set(sorted(alpha, key=alpha.get, reverse=True)[: len(planted)])
        result.update(
            planted_blocks=sorted(planted), teacher=teacher_info, teacher_gen_seconds=round(gen_seconds, 1),
            precision=len(sel & planted) / max(1, len(sel)), recall=len(sel & planted) / len(planted),
            topk_selected=sorted(top), topk_precision=len(top & planted) / len(planted), chance_precision=len(planted) / 30,
        )
        self.results["planted"].append(result)

    def budget(self, samples):
        """The search alone (a 1-step fine-tune) on `samples` examples of a training pool as large as the largest
        budget; the test split is the main runs' one (drawn first), and their training set is part of the pool."""
        from .tasks import to_sft_rows

        p = self.profile
        pool = self.task(p["budget_task"], n_train=max(p["budgets"]) + p["holdout"])
        result = self.train_and_eval(f"budget/{p['budget_task']}/{samples}", p["budget_task"], 0, "budget",
                                     flexora_opts=self.flexora_opts(search_samples=samples),
                                     train_rows=to_sft_rows(pool.train), steps=1, evaluate=False)
        result["search_samples"] = samples
        self.results["budget"].append(result)

    def speed(self, task_name):
        """Fine-tune only (TRL's default gradient checkpointing on, 0 = no search) on the upper blocks
        SPEED_BLOCKS: plain LoRA there via `layers_to_transform` vs Flexora given the same blocks, and LoRA on all."""
        steps = self.profile["speed_steps"]
        for arm, kwargs in (("speed_lora_all", {}), ("speed_lora_upper", dict(layers=SPEED_BLOCKS)),
                            ("speed_flexora_upper", dict(flexora_opts={"selected_layers": SPEED_BLOCKS}))):
            self.results["speed"].append(self.train_and_eval(f"speed/{arm}", task_name, 0, arm, steps=steps,
                                                             evaluate=False, gradient_checkpointing=True, **kwargs))


def plan(profile, skip) -> list[tuple]:
    """All jobs, longest first so that two workers finish close together."""
    tasks, seeds = profile["tasks"], profile["seeds"]
    budgets = sorted(profile["budgets"], reverse=True) if "budget" not in skip else []
    main = [("main_arms", t, s) for s in seeds for t in tasks] if "main" not in skip else []
    jobs = [("budget", b) for b in budgets[:1]] + main + [("budget", b) for b in budgets[1:2]]
    if "unrolled" not in skip:
        jobs += [("unrolled", tasks[0], seeds[0], k) for k in profile["unroll"]]
    if "planted" not in skip:
        jobs.append(("planted",))
    jobs += [("budget", b) for b in budgets[2:]]
    if "speed" not in skip:
        jobs.append(("speed", tasks[0]))
    if "main" not in skip:
        jobs += [("zero_shot", t) for t in tasks]
    return jobs


def job_name(job) -> str:
    return "/".join(map(str, job))


def run_job(item):
    """Worker entry point: one job in a fresh process; returns its results (or the error) to the parent."""
    job, args = item
    start = time.perf_counter()
    try:
        harness = Harness(args)
        getattr(harness, job[0])(*job[1:])
        results, error = harness.results, None
    except Exception:  # keep the other jobs going; `--resume` runs a failed job again
        import traceback

        traceback.print_exc()
        results, error = {}, traceback.format_exc()[-600:]
    for part in results.values():
        for result in part:
            result["job"] = job_name(job)
    return job, results, error, round(time.perf_counter() - start, 1)


class Results:
    """results.json, rewritten (with results.md and results.png) after every job."""

    def __init__(self, args, profile):
        self.out = Path(args.out) if args.out else (RESULTS_DIR / "quick" if args.quick else RESULTS_DIR)
        self.out.mkdir(parents=True, exist_ok=True)
        self.path = self.out / "results.json"
        self.data = {"meta": meta(args, profile), "runs": [], "planted": [], "budget": [], "speed": [], "jobs": {}}
        if args.resume and self.path.exists():
            old = json.loads(self.path.read_text())
            for key in ("runs", "planted", "budget", "speed", "jobs"):
                self.data[key] = old.get(key, self.data[key])
            print(f"resuming: {len(self.data['jobs'])} jobs already in {self.path}", flush=True)

    def done(self, job) -> bool:
        entry = self.data["jobs"].get(job_name(job))
        return entry is not None and entry["error"] is None

    def add(self, job, results, error, seconds):
        for key, part in results.items():
            self.data[key] = [r for r in self.data[key] if r.get("job") != job_name(job)] + part
        self.data["jobs"][job_name(job)] = {"seconds": seconds, "error": error}
        self.save()

    def save(self):
        from .report import write_reports

        self.data["meta"]["updated"] = time.strftime("%Y-%m-%d %H:%M:%S")
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        os.replace(tmp, self.path)
        try:
            write_reports(self.data, self.out)
        except Exception as error:  # a report bug must not lose a long run
            print(f"report failed: {error!r}", flush=True)


def meta(args, profile):
    import peft
    import torch
    import transformers
    import trl

    return {
        "profile": "quick" if args.quick else "full", "settings": profile, "lora": LORA,
        "learning_rate": args.learning_rate, "max_length": args.max_length, "batch_size": 8,
        "workers": args.workers, "torch_threads": args.threads, "planted_blocks": PLANTED_BLOCKS,
        "speed_blocks": SPEED_BLOCKS,
        "machine": {"cpu": _cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
                    "ram_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "trl": trl.__version__, "peft": peft.__version__},
        "memory_method": "peak RSS of the process during the fine-tune phase (sampled every 20 ms from "
                         "/proc/self/statm, after gc + malloc_trim); growth = peak - RSS at fine-tune start",
        "command": " ".join(["python -m benchmarks.run"] + sys.argv[1:]),
    }


def _cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main(argv=None):
    import multiprocessing

    from .tasks import load_task

    args = parse_args(argv)
    profile = profile_of(args)
    for name in profile["tasks"]:
        load_task(name, profile["n_train"], profile["n_test"])  # fail early on missing data
    results = Results(args, profile)
    jobs = [job for job in plan(profile, set(filter(None, args.skip.split(",")))) if not results.done(job)]
    print(f"{len(jobs)} jobs on {args.workers} worker(s): {[job_name(j) for j in jobs]}", flush=True)
    start = time.perf_counter()
    # A fresh process per job (maxtasksperchild=1): no job's heap inflates the next one's memory figures.
    with multiprocessing.get_context("spawn").Pool(args.workers, maxtasksperchild=1) as pool:
        for job, part, error, seconds in pool.imap_unordered(run_job, [(job, args) for job in jobs]):
            print(f"[{time.strftime('%H:%M:%S')}] job {job_name(job)} {'FAILED' if error else 'done'} in "
                  f"{seconds:.0f} s", flush=True)
            results.add(job, part, error, seconds)
    results.data["meta"]["wall_seconds_this_invocation"] = round(time.perf_counter() - start, 1)
    results.data["meta"]["finished"] = not any(j["error"] for j in results.data["jobs"].values())
    results.save()
    print((results.out / "results.md").read_text())
    print(f"JSON: {results.path}")


if __name__ == "__main__":
    main()
