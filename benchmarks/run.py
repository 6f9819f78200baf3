"""Flexora vs LoRA on SmolLM2-135M-Instruct and real BIG-bench multiple-choice tasks, side by side in one run.

    python -m benchmarks.run --quick          # smoke run, a few minutes
    python -m benchmarks.run                  # the full benchmark (~50 min on a shared 2-core CPU)

For every task and seed, with the same data, seed, steps and LoRA settings: (a) LoRA on all blocks (TRL SFTTrainer),
(b) Flexora (FlexoraSFTTrainer, first-order hypergradient), (c) LoRA on a random set of as many blocks as Flexora kept
(`layers_to_transform`), (d) the zero-shot base model; plus Flexora with the unrolled hypergradient (K = 1, 2).
Then planted-layer recovery on the real model and a search-budget study. Results are written after every run
(`benchmarks/results/results.json`, `results.md`, `results.png`), so an interrupted run leaves its partial results;
`--resume` skips the runs already in the JSON.
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
    "quick": dict(tasks=["sports_understanding"], seeds=[0], n_train=96, n_test=48, max_steps=6, search_samples=32,
                  holdout=24, unroll=[1], planted_samples=64, planted_prompts=120, budgets=[16, 32],
                  budget_task="sports_understanding"),
    # Full run: sized for < 1 h on a shared 2-core CPU (see benchmarks/README.md).
    "full": dict(tasks=["sports_understanding", "strategyqa"], seeds=[0, 1, 2], n_train=240, n_test=120,
                 max_steps=16, search_samples=64, holdout=48, unroll=[1, 2], planted_samples=96,
                 planted_prompts=200, budgets=[16, 32, 64, 128], budget_task="sports_understanding"),
}
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
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 measured 5-8x faster than 2 on the shared 2-core machine)")
    p.add_argument("--out", default=None, help="results directory (default benchmarks/results, quick: .../quick)")
    p.add_argument("--resume", action="store_true", help="keep the runs already in the results JSON")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: main,unrolled,planted,budget")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------------ helpers
def load_base(model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)


def make_config(flexora: bool, output_dir: str, seed: int, steps: int, lr: float, max_length: int, **flexora_opts):
    from trl import SFTConfig

    from flexora_trl import FlexoraSFTConfig

    common = dict(output_dir=output_dir, max_steps=steps, per_device_train_batch_size=8, per_device_eval_batch_size=8,
                  learning_rate=lr, lr_scheduler_type="constant", warmup_steps=0, max_length=max_length,
                  logging_steps=10_000, save_strategy="no", report_to="none", use_cpu=True, bf16=False, seed=seed,
                  data_seed=seed, disable_tqdm=True, dataset_num_proc=None)
    if flexora:
        return FlexoraSFTConfig(**common, **flexora_opts)
    return SFTConfig(**common)


class Harness:
    def __init__(self, args):
        import torch

        torch.set_num_threads(args.threads)
        from flexora_trl.smollm2 import smollm2_path
        from transformers import AutoTokenizer

        self.args = args
        self.profile = dict(PROFILES["quick" if args.quick else "full"])
        if args.tasks:
            self.profile["tasks"] = args.tasks.split(",")
            self.profile["budget_task"] = self.profile["tasks"][0]
        if args.seeds:
            self.profile["seeds"] = [int(s) for s in args.seeds.split(",")]
        if args.max_steps:
            self.profile["max_steps"] = args.max_steps
        self.out = Path(args.out) if args.out else (RESULTS_DIR / "quick" if args.quick else RESULTS_DIR)
        self.out.mkdir(parents=True, exist_ok=True)
        self.json_path = self.out / "results.json"
        self.model_dir = smollm2_path()
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.tasks = {}
        self.results = {"meta": self.meta(), "runs": [], "planted": [], "budget": []}
        if args.resume and self.json_path.exists():
            old = json.loads(self.json_path.read_text())
            for key in ("runs", "planted", "budget"):
                self.results[key] = old.get(key, [])
            print(f"resuming: {len(self.results['runs'])} runs already in {self.json_path}", flush=True)
        self.tmp = tempfile.mkdtemp(prefix="flexora-bench-")

    def meta(self):
        import peft
        import torch
        import transformers
        import trl

        return {
            "profile": "quick" if self.args.quick else "full", "settings": self.profile, "lora": LORA,
            "learning_rate": self.args.learning_rate, "max_length": self.args.max_length, "batch_size": 8,
            "torch_threads": self.args.threads, "planted_blocks": PLANTED_BLOCKS,
            "machine": {"cpu": _cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
                        "ram_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)},
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                         "trl": trl.__version__, "peft": peft.__version__},
            "memory_method": "peak RSS of the process during the fine-tune phase (sampled every 20 ms from "
                             "/proc/self/statm, after gc + malloc_trim); growth = peak - RSS at fine-tune start",
            "command": " ".join(["python -m benchmarks.run"] + sys.argv[1:]),
        }

    def task(self, name):
        from .tasks import load_task

        if name not in self.tasks:
            p = self.profile
            self.tasks[name] = load_task(name, p["n_train"], p["n_test"], tokenizer=self.tokenizer,
                                         max_length=self.args.max_length)
        return self.tasks[name]

    def save(self):
        from .report import write_reports

        self.results["meta"]["updated"] = time.strftime("%Y-%m-%d %H:%M:%S")
        tmp = self.json_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.results, indent=1))
        os.replace(tmp, self.json_path)
        try:
            write_reports(self.results, self.out)
        except Exception as error:  # a report bug must not lose a long run
            print(f"report failed: {error!r}", flush=True)

    def done(self, key):
        return any(r["key"] == key for r in self.results["runs"])

    def find(self, key):
        return next((r for r in self.results["runs"] if r["key"] == key), None)

    # -------------------------------------------------------------------------------------------- one training run
    def train_and_eval(self, key, task_name, seed, arm, layers=None, flexora_opts=None, train_rows=None,
                       evaluate=True):
        from datasets import Dataset
        from peft import LoraConfig
        from transformers import TrainerCallback
        from trl import SFTTrainer

        from flexora_trl import FlexoraSFTTrainer
        from flexora_trl.adapter import count_trainable

        from .memory import PeakRSS
        from .scoring import score_multiple_choice
        from .tasks import to_sft_rows

        p = self.profile
        task = self.task(task_name) if task_name else None
        rows = train_rows if train_rows is not None else to_sft_rows(task.train)
        dataset = Dataset.from_list(rows)
        out_dir = os.path.join(self.tmp, key.replace("/", "_"))
        flexora = flexora_opts is not None
        config = make_config(flexora, out_dir, seed, p["max_steps"] if evaluate else 1, self.args.learning_rate,
                             self.args.max_length, **(flexora_opts or {}))
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
        trainer = cls(model=model, args=config, train_dataset=dataset, processing_class=self.tokenizer,
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
            "finetune_steps": config.max_steps,
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

    # -------------------------------------------------------------------------------------------- the parts
    def zero_shot(self, task_name):
        from .scoring import score_multiple_choice

        key = f"{task_name}/zero_shot"
        if self.done(key):
            return
        task = self.task(task_name)
        model = load_base(self.model_dir)
        result = {"key": key, "task": task_name, "seed": None, "arm": "zero_shot", "trainable_params": 0,
                  **score_multiple_choice(model, self.tokenizer, task.test), "chance": task.chance,
                  "n_train": len(task.train)}
        print(f"[{time.strftime('%H:%M:%S')}] {key}: {result}", flush=True)
        self.results["runs"].append(result)
        self.save()

    def main_arms(self, task_name, seed):
        import random

        key = f"{task_name}/lora_all/{seed}"
        if not self.done(key):
            self.results["runs"].append(self.train_and_eval(key, task_name, seed, "lora_all"))
            self.save()
        key = f"{task_name}/flexora/{seed}"
        if not self.done(key):
            self.results["runs"].append(self.train_and_eval(key, task_name, seed, "flexora",
                                                            flexora_opts=self.flexora_opts()))
            self.save()
        key = f"{task_name}/random/{seed}"
        if not self.done(key):
            k = len(self.find(f"{task_name}/flexora/{seed}")["selected_layers"])
            layers = sorted(random.Random(10_000 + seed).sample(range(30), k))
            self.results["runs"].append(self.train_and_eval(key, task_name, seed, "random", layers=layers))
            self.save()

    def unrolled(self, task_name, seed, k):
        key = f"{task_name}/flexora_unrolled_k{k}/{seed}"
        if not self.done(key):
            opts = self.flexora_opts(hypergradient="unrolled", unroll_steps=k)
            self.results["runs"].append(self.train_and_eval(key, task_name, seed, f"flexora_unrolled_k{k}",
                                                            flexora_opts=opts))
            self.save()

    def planted(self):
        """Teacher = SmolLM2 + a random LoRA delta on PLANTED_BLOCKS; it answers prompts greedily, and the search
        runs on (prompt, teacher answer) pairs. Precision/recall of the selection against the planted blocks."""
        if self.results["planted"]:
            return
        from .planted import teacher_rows

        p = self.profile
        prompts = [e.prompt for name in self.profile["tasks"] for e in self.task(name).train + self.task(name).test]
        prompts = prompts[: p["planted_prompts"]]
        start = time.perf_counter()
        rows, teacher_info = teacher_rows(load_base(self.model_dir), self.tokenizer, prompts, PLANTED_BLOCKS, LORA)
        gen_seconds = time.perf_counter() - start
        planted = set(PLANTED_BLOCKS)
        for hyper in ["first_order"]:
            opts = self.flexora_opts(hypergradient=hyper, unroll_steps=1)
            opts.update(search_samples=p["planted_samples"])
            result = self.train_and_eval(f"planted/{hyper}", None, 0, f"planted_{hyper}", flexora_opts=opts,
                                         train_rows=rows, evaluate=False)
            sel = set(result["selected_layers"])
            alpha = {int(b): a for b, a in result["alpha"].items()}
            top = set(sorted(alpha, key=alpha.get, reverse=True)[: len(planted)])
            result.update(
                planted_blocks=sorted(planted), teacher=teacher_info, teacher_gen_seconds=round(gen_seconds, 1),
                precision=len(sel & planted) / max(1, len(sel)), recall=len(sel & planted) / len(planted),
                topk_selected=sorted(top), topk_precision=len(top & planted) / len(planted),
                chance_precision=len(planted) / 30,
            )
            self.results["planted"].append(result)
            self.save()

    def budget(self):
        task_name = self.profile["budget_task"]
        done = {r["search_samples"] for r in self.results["budget"]}
        for samples in self.profile["budgets"]:
            if samples in done:
                continue
            main = self.find(f"{task_name}/flexora/{self.profile['seeds'][0]}")
            if main is not None and samples == self.profile["search_samples"]:
                result = dict(main, key=f"budget/{task_name}/{samples}", arm="budget", search_samples=samples,
                              reused_from=main["key"])
                self.results["budget"].append(result)
                self.save()
                continue
            opts = self.flexora_opts(search_samples=samples)
            result = self.train_and_eval(f"budget/{task_name}/{samples}", task_name, 0, "budget", flexora_opts=opts,
                                         evaluate=False)
            result["search_samples"] = samples
            self.results["budget"].append(result)
            self.save()


def _cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main(argv=None):
    args = parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    start = time.perf_counter()
    h = Harness(args)
    for name in h.profile["tasks"]:
        h.task(name)  # fail early on missing data
    seeds, tasks = h.profile["seeds"], h.profile["tasks"]
    # Order: every part gets measured early (seed 0 of all tasks, the unrolled rows, planted recovery, the budget
    # study), then the remaining seeds; an interrupted run still has a row for everything.
    if "main" not in skip:
        for name in tasks:
            h.zero_shot(name)
            h.main_arms(name, seeds[0])
    if "unrolled" not in skip:
        for k in h.profile["unroll"]:
            h.unrolled(tasks[0], seeds[0], k)
    for part, run_part in (("planted", h.planted), ("budget", h.budget)):
        if part not in skip:
            try:
                run_part()
            except Exception:  # keep going: the remaining seeds matter more; `--resume` redoes the part later
                import traceback

                traceback.print_exc()
                h.results["meta"].setdefault("errors", []).append(f"{part}: {traceback.format_exc()[-400:]}")
    if "main" not in skip:
        for seed in seeds[1:]:
            for name in tasks:
                h.main_arms(name, seed)
    h.results["meta"]["wall_seconds_this_invocation"] = round(time.perf_counter() - start, 1)
    h.results["meta"]["finished"] = True
    h.save()
    print((h.out / "results.md").read_text())
    print(f"JSON: {h.json_path}")


if __name__ == "__main__":
    main()
