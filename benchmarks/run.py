"""Flexora vs LoRA on SmolLM2-135M-Instruct: paired, per seed, in two regimes, with the peers a user would pick instead.

    python -m benchmarks.run --profile quick   # smoke run of every part (minutes)
    python -m benchmarks.run --profile dev     # one task per regime, 2 seeds, planted blocks (<= 30 min on 2 cores)
    python -m benchmarks.run --profile full    # the README's table (measured 135 min quiet on 2 cores, bf16, before
                                               # the lowest-blocks and last-ranked peers added 16 fine-tunes each,
                                               # 55-90 s each there)
    python -m benchmarks.run --profile full --resume   # finish an interrupted run

For every task, regime and seed, with the same data, data order, steps and LoRA settings: LoRA on all blocks (TRL
SFTTrainer), Flexora (FlexoraSFTTrainer), LoRA on random blocks of the count Flexora kept (several draws), LoRA on the
blocks the data-free Spectrum signal-to-noise ranking picks (same count), LoRA on the lowest blocks (same count: the
depth the gate leans to), LoRA on the blocks Flexora's score ranks last (same count: the other end of its order), and
the zero-shot base model. Around them:
an all-linear-modules pair per task, planted-block recovery on the real model, a search-budget study, a long run that
measures the search's share at length, and the fine-tune speed of a high selection. The work is split into jobs run by
`--workers` processes (one torch thread each, a fresh process per job); results are written after every job, so an
interrupted run leaves its partial results and `--resume` runs only the missing (or failed) jobs.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import shlex
import sys
import tempfile
import time
from pathlib import Path


def offline_and_quiet():
    """The benchmark's processes: no hub, no tokenizer threads, transformers' errors only. Set when a benchmark starts,
    not on import, so that importing the harness (the tests do) leaves the environment of later subprocesses alone."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


RESULTS_DIR = Path(__file__).resolve().parent / "results"
NUM_BLOCKS = 30  # SmolLM2-135M
LORA = dict(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TARGETS = {"qv": LORA["target_modules"], "all_linear": ALL_LINEAR}
SPEED_BLOCKS = list(range(15, 30))  # the upper half: the fine-tune needs no backward below block 15
# built by benchmarks.planted.planted_rows
PLANTED_DESIGNS = ("greedy", "sampled", "principal", "repair", "balanced", "balanced_rows")
TASKS = ["hyperbaton", "intent_recognition", "reasoning_about_colored_objects", "instructions"]

# learn: all-block LoRA clearly beats zero-shot. overfit: a small training set over many epochs, where all-block LoRA's
# held-out answer loss rises after its best epoch (each run records that curve). The search's budget is given per
# regime: the training set is small in the overfit regime, so the search cycles over it for `search_steps` steps.
# Learning rates: 40 steps at 1e-3 leave hyperbaton at zero-shot accuracy (0.455 vs 0.445, seed 0), 3e-4 learns it
# (0.580). The overfit regime's rate is calibrated per task, the lowest of 1e-3, 2e-3, 5e-3 at which all-block LoRA's
# held-out answer loss rises beyond noise within 8 epochs (probes in benchmarks/README.md). Every other part
# (planted, budget, long, speed) runs at 1e-3.
LEARNING_RATE = 1e-3
REGIMES = {
    "learn": dict(n_train=256, max_steps=40, learning_rate=3e-4,
                  search=dict(search_samples=192, search_holdout_samples=64)),
    "overfit": dict(n_train=24, epochs=8, search=dict(search_holdout_samples=8, search_steps=8),
                    learning_rate={"hyperbaton": 2e-3, "intent_recognition": 5e-3,
                                   "reasoning_about_colored_objects": 1e-3, "instructions": 5e-3}),
}
PROFILES = {
    "quick": dict(main=[("hyperbaton", "learn"), ("instructions", "overfit")], seeds=[0], random_draws=2, n_test=32,
                  regimes={"learn": dict(n_train=64, max_steps=4, search=dict(search_samples=24,
                                                                              search_holdout_samples=16)),
                           "overfit": dict(n_train=16, epochs=3, search=dict(search_holdout_samples=8,
                                                                            search_steps=2))},
                  linear=[("hyperbaton", "overfit", 0)], planted=[(1, "qv"), (2, "all_linear")], planted_samples=32,
                  planted_task="hyperbaton", planted_prompts=64, budgets=[32, 64], budget_task="hyperbaton",
                  long=dict(task="hyperbaton", steps=6, search=dict(search_samples=16, search_holdout_samples=16)),
                  speed_steps=2),
    "dev": dict(main=[("intent_recognition", "learn"), ("hyperbaton", "overfit")], seeds=[0, 1], random_draws=2,
                n_test=200, linear=[], planted=[(1, "qv"), (2, "all_linear")], planted_samples=192,
                planted_task="hyperbaton", planted_prompts=256, budgets=[], budget_task="hyperbaton", long=None,
                speed_steps=0),
    # Two seeds: three would take the full profile over 150 min on 2 cores (bf16, ~180 min estimated).
    "full": dict(main=[(t, r) for t in TASKS for r in REGIMES], seeds=[0, 1], random_draws=2, n_test=200,
                 linear=[(t, "overfit", 0) for t in TASKS], planted=[(1, "qv"), (2, "qv"), (1, "all_linear"),
                                                                      (2, "all_linear")],
                 planted_samples=192, planted_task="hyperbaton", planted_prompts=256, budgets=[500, 2000],
                 budget_task="hyperbaton",
                 long=dict(task="hyperbaton", steps=300), speed_steps=12),
}
BATCH = 8
MAIN_PEERS = ("random", "spectrum", "lowest", "last_ranked")  # LoRA on Flexora's count of blocks, chosen otherwise
CURVE_EXAMPLES = 64  # test examples scored after every epoch for the overfitting curve (its shape, cheaply)


def integers(text: str) -> list[int]:
    """argparse type of the comma-separated seed and size lists: a malformed one is an error naming its flag."""
    try:
        return [int(item) for item in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"give comma-separated integers, e.g. 0,1,2 (got {text!r})") from None


def main_peers(text: str) -> list[str]:
    """argparse type of --main-peers: a comma-separated subset of MAIN_PEERS."""
    names = text.split(",") if text else []
    unknown = [name for name in names if name not in MAIN_PEERS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown peer(s) {', '.join(unknown)}: choose from {','.join(MAIN_PEERS)}")
    return names


def json_object(text: str) -> dict:
    """argparse type of --flexora-options: a JSON object, or an error naming the flag."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not JSON ({error}): {text!r}") from None
    if not isinstance(value, dict):
        example = '\'{"selection_score": "ablation"}\''
        raise argparse.ArgumentTypeError(f"give a JSON object, e.g. {example} (got {text!r})")
    return value


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", choices=sorted(PROFILES), default="full")
    p.add_argument("--quick", action="store_true", help="same as --profile quick")
    p.add_argument("--seeds", type=integers, help="comma-separated training seeds (default: the profile's)")
    p.add_argument("--planted", help="comma-separated planted sets as set:targets[:seed], e.g. 3:qv,4:all_linear:1 "
                                     "(default: the profile's; seed = the training seed, default 0); sets are drawn "
                                     "from their number, so new numbers are new sets")
    p.add_argument("--main", help="comma-separated task:regime pairs of the main part, e.g. winowhy:learn (default: "
                                  "the profile's); any multiple-choice BIG-bench task in the local cache with enough "
                                  "examples, or a generated one (benchmarks/generated.py, e.g. addition); an overfit "
                                  "pair on a task without a calibrated rate needs --learning-rate (python -m "
                                  "benchmarks.calibrate finds one)")
    p.add_argument("--budget-task", help="the task of the search-budget study (default: the profile's); any "
                                         "multiple-choice BIG-bench task in the local cache with enough examples, "
                                         "or a generated one (benchmarks/generated.py)")
    p.add_argument("--planted-task", help="the task whose prompts the planted teacher answers (default: the profile's, "
                                          "hyperbaton); any multiple-choice task of the benchmark, e.g. a generated "
                                          "one (benchmarks/generated.py) where BIG-bench is not in the cache")
    p.add_argument("--budgets", type=integers,
                   help="comma-separated search sizes of the budget study, in samples (default: the profile's)")
    p.add_argument("--budget-seed", type=int, default=0,
                   help="the training seed of the budget study's searches (default 0): another seed's searches on the "
                        "same data tell the budget's effect on the selection from the seed's")
    p.add_argument("--long-task", help="the task of the long run (default: the profile's); any multiple-choice "
                                       "BIG-bench task in the local cache with enough examples, or a generated one "
                                       "(benchmarks/generated.py), e.g. one none of the other parts uses")
    p.add_argument("--long-steps", type=int, help="fine-tune steps of the long run (default: the profile's); the "
                                                  "training set grows with them (steps x batch examples)")
    p.add_argument("--long-seeds", type=integers, default=[0],
                   help="comma-separated training seeds of the long run (default 0); each seed is a pair of runs, "
                        "all-block LoRA and Flexora, on the same data")
    p.add_argument("--learn-steps", type=int, help="fine-tune steps of the learn regime (default: the profile's); "
                                                   "the same training set and search, so the same blocks, trained "
                                                   "longer")
    p.add_argument("--planted-prompts", type=int,
                   help="prompts of the planted part (default: the profile's, 256); the search trains on 3/4 of "
                        "them in one pass and holds out 1/4, so more prompts are a longer search over as many "
                        "distinct rows")
    p.add_argument("--planted-design", choices=PLANTED_DESIGNS, default="balanced_rows",
                   help="the planted teacher: greedy = a random delta (b_std 0.4 on q,v, 0.2 on all linear) writing "
                        "10 greedy tokens; sampled = a delta sized to a per-token KL of 0.1 from the base, writing 48 "
                        "sampled tokens; principal = the same on its inputs' principal directions; repair = the base "
                        "writes 48 sampled tokens for a student whose planted blocks lose part of their weights' top "
                        "singular directions (one part for all, KL 0.1); balanced = repair with each block's part "
                        "sized alone to an equal share of the KL on a probe of greedy answers (on the rows themselves "
                        "the shares came out 18x apart); balanced_rows (the default: undoing any one planted block's "
                        "damage gives back as much as any other's) = repair with each block's marginal KL (all damaged "
                        "against all but it) an equal share, measured on 64 of the sampled rows; the committed "
                        "results.json used greedy (see benchmarks/README.md)")
    p.add_argument("--parts", help="comma-separated parts to run: main,linear,planted,budget,long,speed "
                                   "(default: all of the profile's)")
    p.add_argument("--main-peers", type=main_peers, default=list(MAIN_PEERS),
                   help="comma-separated peers of Flexora's count in the main part (default: all, "
                        f"{','.join(MAIN_PEERS)}); fewer for a study that needs only some, at less cost")
    p.add_argument("--flexora-options", type=json_object, default={},
                   help="JSON object of Flexora options applied to every Flexora run (e.g. to try a variant); "
                        "recorded in the results")
    p.add_argument("--learning-rate", type=float, default=None,
                   help=f"one learning rate for every run (default: each regime's own, {LEARNING_RATE} elsewhere)")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                   help="training precision of every arm: bf16 autocast (~1.25x faster per step on a CPU with bf16 "
                        "instructions) or fp32; `auto` (the default) = bf16 where the hardware has bf16 instructions, "
                        "else fp32; scoring is fp32 either way")
    p.add_argument("--max-length", type=int, default=64, help="multiple-choice tasks (the chat task needs 96)")
    p.add_argument("--workers", type=int, default=2, help="processes running jobs side by side (default 2)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per worker (default 1)")
    p.add_argument("--out", default=None, help="results directory (default benchmarks/results[/<profile>])")
    p.add_argument("--resume", action="store_true", help="keep the jobs already in the results JSON")
    args = p.parse_args(argv)
    if args.quick:
        args.profile = "quick"
    if args.precision == "auto":
        args.precision = "bf16" if native_bf16() else "fp32"
    elif args.precision == "bf16" and not native_bf16():
        print("warning: --precision bf16 on hardware without bf16 instructions: torch's fallback bf16 matmul is "
              "about 70x slower than fp32 (measured on an AVX2-only CPU); `auto` picks fp32 here.", flush=True)
    return args


def native_bf16() -> bool:
    """Whether bf16 matmuls run on bf16 instructions. Without them (an AVX2-only CPU) torch falls back to a scalar
    kernel: a 512x576 @ 576x1536 matmul took 1.22 s against 0.018 s in fp32, and a planted search step 4 minutes."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def profile_of(args) -> dict:
    profile = dict(PROFILES[args.profile])
    overrides = profile.get("regimes", {})  # a profile changes a regime's sizes, not its learning rate
    profile["regimes"] = {name: {**regime, **overrides.get(name, {})} for name, regime in REGIMES.items()}
    if args.seeds:
        profile["seeds"] = args.seeds
    if args.main:
        profile["main"] = [tuple(pair.split(":")) for pair in args.main.split(",")]
        for pair in profile["main"]:
            if len(pair) != 2:
                raise SystemExit(f"--main {':'.join(pair)}: give task:regime pairs, e.g. winowhy:learn.")
            task, regime = pair
            if regime not in REGIMES:
                raise SystemExit(f"--main {task}:{regime}: the regime must be one of {sorted(REGIMES)}.")
            rate = profile["regimes"][regime]["learning_rate"]
            if isinstance(rate, dict) and task not in rate and args.learning_rate is None:
                raise SystemExit(f"--main {task}:{regime}: the {regime} regime's learning rate is calibrated for "
                                 f"{sorted(rate)} only; give one with --learning-rate (`python -m "
                                 f"benchmarks.calibrate {task} --out CAL.json` finds it by the regime's rule).")
    if args.learn_steps:
        profile["regimes"]["learn"] = {**profile["regimes"]["learn"], "max_steps": args.learn_steps}
    if args.budget_task:
        profile["budget_task"] = args.budget_task
    if args.planted_task:
        profile["planted_task"] = args.planted_task
    if args.budgets:
        profile["budgets"] = args.budgets
    profile["budget_seed"] = args.budget_seed
    if args.long_task and profile.get("long"):
        profile["long"] = {**profile["long"], "task": args.long_task}
    if args.long_steps and profile.get("long"):
        profile["long"] = {**profile["long"], "steps": args.long_steps}
    profile["long_seeds"] = args.long_seeds
    if args.planted_prompts:
        profile.update(planted_prompts=args.planted_prompts,
                       planted_samples=args.planted_prompts - args.planted_prompts // 4)
    if args.planted:
        profile["planted"] = [(int(number), targets, *map(int, seed)) for number, targets, *seed in
                              (spec.split(":") for spec in args.planted.split(","))]
    return profile


def load_base(model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)


def make_config(flexora: bool, output_dir: str, seed: int, max_length: int, max_steps: int = -1, epochs: float = 1,
                lr: float = 1e-3, batch: int = BATCH, gradient_checkpointing: bool = False, bf16: bool = False,
                **flexora_opts):
    """The same settings for every arm. Gradient checkpointing is off (a 135M model at 64 tokens has no memory to
    save, and it costs a third more compute) except in the speed job, which measures TRL's default."""
    from trl import SFTConfig

    from flexora_trl import FlexoraSFTConfig

    common = dict(output_dir=output_dir, max_steps=max_steps, num_train_epochs=epochs,
                  per_device_train_batch_size=batch, per_device_eval_batch_size=BATCH, learning_rate=lr,
                  lr_scheduler_type="constant", warmup_steps=0, max_length=max_length, logging_steps=10_000,
                  save_strategy="no", report_to="none", use_cpu=True, bf16=bf16, seed=seed, data_seed=seed,
                  disable_tqdm=True, dataset_num_proc=None, gradient_checkpointing=gradient_checkpointing,
                  completion_only_loss=True)  # every arm's rows are prompt-completion, or pretokenized with a mask
    if flexora:
        return FlexoraSFTConfig(**common, **flexora_opts)
    return SFTConfig(**common)


def random_blocks(seed: int, draw: int, count: int) -> list[int]:
    return sorted(random.Random(10_000 * (draw + 1) + seed).sample(range(NUM_BLOCKS), count))


def highest(scores: dict, count: int) -> list[int]:
    """The `count` blocks with the highest scores, ties to the lower block (keys may be JSON's strings)."""
    return sorted(int(b) for b in sorted(scores, key=lambda b: (-scores[b], int(b)))[:count])


def last_ranked(scores: dict, count: int) -> list[int]:
    """The `count` blocks with the lowest scores, ties to the lower block: the other end of a selection's order."""
    return highest({b: -value for b, value in scores.items()}, count)


def bottom_blocks(count: int) -> list[int]:
    """The `count` lowest blocks of the stack (the `lowest` peer): the plain depth rule, since the gate leans low."""
    return list(range(count))


def random_draws(flexora: dict, draws: int) -> list[list[int]]:
    """The main part's random peer of a Flexora run: `draws` random sets of its count, drawn from its seed."""
    count = len(flexora["selected_layers"])
    return [random_blocks(flexora["seed"], draw, count) for draw in range(draws)]


def peer_key(flexora: dict, arm: str, draw: int | None = None) -> str:
    """The key of a peer's run in a Flexora run's cell (task/regime/arm/seed, then the draw of a random peer)."""
    key = f"{flexora['task']}/{flexora['regime']}/{arm}/{flexora['seed']}"
    return key if draw is None else f"{key}/{draw}"


def planted_blocks(set_seed: int, count: int = 6) -> list[int]:
    """Planted sets are drawn, not chosen: a method tuned to one set would not find another."""
    return sorted(random.Random(1_000 + set_seed).sample(range(NUM_BLOCKS), count))


class Harness:
    """Runs one job in a worker process; its results are returned to the parent, which owns the JSON."""

    def __init__(self, args):
        import torch

        torch.set_num_threads(args.threads)
        from transformers import AutoTokenizer

        from flexora_trl.smollm2 import smollm2_path

        self.args = args
        self.profile = profile_of(args)
        self.model_dir = smollm2_path()
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.tasks = {}
        self.results = {"runs": [], "planted": [], "budget": [], "long": [], "speed": []}
        self.tmp = tempfile.mkdtemp(prefix="flexora-bench-")

    def task(self, name, n_train):
        from .tasks import load_task, task_max_length

        if (name, n_train) not in self.tasks:
            self.tasks[name, n_train] = load_task(name, n_train, self.profile["n_test"], tokenizer=self.tokenizer,
                                                  max_length=task_max_length(name, self.args.max_length))
        return self.tasks[name, n_train]

    def flexora_opts(self, **opts):
        return {"search_val_batches": 1, **opts, **self.args.flexora_options}

    # -------------------------------------------------------------------------------------------- one training run
    def train_and_eval(self, key, task, seed, arm, layers=None, flexora_opts=None, train_rows=None, max_steps=-1,
                       epochs=1, evaluate=True, curve=False, targets="qv", batch=BATCH, gradient_checkpointing=False,
                       learning_rate=LEARNING_RATE, rate_scale=1.0, max_length=None, model=None, **labels):
        """Train one arm (of `model`, by default the base) and score it on the task's test set; `curve` adds the
        held-out answer loss per epoch; `rate_scale` multiplies the learning rate the profile or the command gives."""
        from datasets import Dataset
        from peft import LoraConfig
        from transformers import TrainerCallback, set_seed
        from trl import SFTTrainer

        from flexora_trl import FlexoraSFTTrainer
        from flexora_trl.adapter import count_trainable

        from .memory import PeakRSS
        from .scoring import answer_losses, evaluate_task
        from .tasks import task_max_length, to_sft_rows

        rows = train_rows if train_rows is not None else to_sft_rows(task.train)
        out_dir = os.path.join(self.tmp, key.replace("/", "_"))
        flexora = flexora_opts is not None
        if max_length is None:
            max_length = task_max_length(task.name, self.args.max_length) if task else self.args.max_length
        lr = (self.args.learning_rate or learning_rate) * rate_scale
        config = make_config(flexora, out_dir, seed, max_length, max_steps, epochs, lr, batch,
                             gradient_checkpointing, self.args.precision == "bf16", **(flexora_opts or {}))
        lora_kwargs = dict(LORA, target_modules=TARGETS[targets])
        if layers is not None:
            lora_kwargs.update(layers_to_transform=sorted(layers), layers_pattern="layers")
        tracker = PeakRSS()
        phase = {"curve": []}
        tokenizer = self.tokenizer

        class Measure(TrainerCallback):
            def on_train_begin(self, *a, **k):
                tracker.start()
                phase["finetune_start"] = time.perf_counter()

            def on_epoch_end(self, args, state, control, model=None, **k):
                if curve:  # scoring time is kept out of the fine-tune's
                    paused = time.perf_counter()
                    phase["curve"].append([round(x, 4) for x in answer_losses(model, tokenizer,
                                                                              task.test[:CURVE_EXAMPLES])])
                    phase["finetune_start"] += time.perf_counter() - paused

            def on_train_end(self, *a, **k):
                phase["finetune_seconds"] = time.perf_counter() - phase["finetune_start"]
                phase["memory"] = tracker.stop()

        cls = FlexoraSFTTrainer if flexora else SFTTrainer
        # TRL builds the LoRA before the Trainer seeds anything: seed here, so every arm's LoRA starts from its seed
        # and not from whatever the process drew before (Flexora re-seeds its search's LoRA itself).
        set_seed(seed)
        model = model if model is not None else load_base(self.model_dir)
        trainer = cls(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=self.tokenizer,
                      peft_config=LoraConfig(**lora_kwargs), callbacks=[Measure()])
        start = time.perf_counter()
        trainer.train()
        total = time.perf_counter() - start
        record = trainer.flexora_record.to_dict() if flexora else None  # the JSON form results.json keeps
        result = {
            "key": key, "task": task.name if task else None, "seed": seed, "arm": arm, "targets": targets, **labels,
            "learning_rate": lr, **({"rate_scale": rate_scale} if rate_scale != 1.0 else {}),
            "trainable_params": count_trainable(trainer.model), "train_seconds_total": round(total, 2),
            "search_seconds": round(record["search_seconds"], 2) if record else 0.0,
            "finetune_seconds": round(phase["finetune_seconds"], 2),
            "finetune_steps": trainer.state.global_step, "batch_size": batch, "train_examples": len(rows),
            "gradient_checkpointing": gradient_checkpointing, **phase["memory"],
            "selected_layers": sorted(record["selected_layers"]) if record else (sorted(layers) if layers else None),
        }
        if curve:  # per epoch: the mean, and every example's loss (a rise is told from noise by a paired test)
            result["heldout_loss_per_epoch"] = [round(sum(e) / len(e), 4) for e in phase["curve"]]
            result["heldout_item_losses"] = phase["curve"]
        if record:
            result.update(alpha=record.get("alpha"), scores=record.get("scores"),
                          score_stderr=record.get("score_stderr"), score_batches=record.get("score_batches"),
                          count_scores=record.get("count_scores"), count_stderr=record.get("count_stderr"),
                          selection_score=record.get("selection_score"),
                          score_seconds=record.get("score_seconds"),
                          score_separation=record.get("score_separation"),
                          lora_norms=record.get("lora_norms"),
                          group_sparsity_strength=record.get("group_sparsity_strength"),
                          lora_params_all_blocks=record["lora_params_all_blocks"],
                          search_inner_steps=record.get("search_inner_steps"),
                          search_outer_steps=record.get("search_outer_steps"), flexora_options=flexora_opts)
        if evaluate:
            result.update(evaluate_task(trainer.model, self.tokenizer, task))
        del trainer
        print(f"[{time.strftime('%H:%M:%S')}] {key}: " + json.dumps({k: v for k, v in result.items() if k != "alpha"}),
              flush=True)
        return result

    def regime_run(self, key, task_name, regime, seed, arm, **kwargs):
        r = self.profile["regimes"][regime]
        steps = dict(max_steps=r["max_steps"]) if "max_steps" in r else dict(epochs=r["epochs"])
        lr = r["learning_rate"].get(task_name) if isinstance(r["learning_rate"], dict) else r["learning_rate"]
        return self.train_and_eval(key, self.task(task_name, r["n_train"]), seed, arm, regime=regime, **steps,
                                   learning_rate=lr, **kwargs)

    # -------------------------------------------------------------------------------------------- the jobs
    def zero_shot(self, task_name):
        """The base model, once per task; recorded under every regime of the task (they share the test split)."""
        from .scoring import evaluate_task

        regimes = [r for t, r in self.profile["main"] if t == task_name]
        task = self.task(task_name, self.profile["regimes"][regimes[0]]["n_train"])
        scores = evaluate_task(load_base(self.model_dir), self.tokenizer, task)
        for regime in regimes:
            self.results["runs"].append({"key": f"{task_name}/{regime}/zero_shot", "task": task_name,
                                         "regime": regime, "seed": None, "arm": "zero_shot", "trainable_params": 0,
                                         "chance": task.chance, **scores})

    def main(self, task_name, regime, seed):
        """All-block LoRA, Flexora, and of Flexora's count: random blocks (several draws), Spectrum's blocks, the
        lowest blocks (the plain depth rule: the gate leans to the lower blocks, so does it beat that rule?) and the
        blocks its score ranks last."""
        runs = self.results["runs"]
        base = f"{task_name}/{regime}"
        runs.append(self.regime_run(f"{base}/lora_all/{seed}", task_name, regime, seed, "lora_all",
                                    curve=regime == "overfit"))
        search = self.profile["regimes"][regime]["search"]
        flexora = self.regime_run(f"{base}/flexora/{seed}", task_name, regime, seed, "flexora",
                                  flexora_opts=self.flexora_opts(**search))
        runs.append(flexora)
        count = len(flexora["selected_layers"])
        peers = self.args.main_peers
        for draw, blocks in enumerate(random_draws(flexora, self.profile["random_draws"] if "random" in peers else 0)):
            runs.append(self.peer_run(flexora, "random", blocks, draw=draw))
        if "spectrum" in peers:
            runs.append(self.spectrum_run(flexora))
        if "lowest" in peers:
            runs.append(self.peer_run(flexora, "lowest", bottom_blocks(count)))
        # The other end of the score's order: if the order carries accuracy, Flexora minus this is larger than
        # Flexora minus random blocks, on the same noise. No search (`selected_layers` given): no order, no peer.
        if "last_ranked" in peers and flexora["scores"]:
            runs.append(self.peer_run(flexora, "last_ranked", last_ranked(flexora["scores"], count)))

    def peer_run(self, flexora: dict, arm: str, blocks: list[int], draw: int | None = None, **labels) -> dict:
        """LoRA on `blocks`, in the cell (task, regime, seed) of a Flexora run: its data, steps and seed."""
        labels.update({} if draw is None else dict(draw=draw))
        return self.regime_run(peer_key(flexora, arm, draw), flexora["task"], flexora["regime"], flexora["seed"], arm,
                               layers=blocks, **labels)

    def spectrum_run(self, flexora: dict) -> dict:
        """LoRA on Spectrum's blocks of Flexora's count: the paper's score (normalised by the largest singular value),
        as published, with the seconds it took to choose them."""
        from .spectrum import spectrum_blocks

        start = time.perf_counter()
        blocks = spectrum_blocks(load_base(self.model_dir), LORA["target_modules"], len(flexora["selected_layers"]),
                                 normalize=True)
        return self.peer_run(flexora, "spectrum", blocks, selector_seconds=round(time.perf_counter() - start, 2))

    def linear(self, task_name, regime, seed):
        """The same pair with LoRA on every linear module of the blocks."""
        search = self.profile["regimes"][regime]["search"]
        base = f"{task_name}/{regime}"
        runs = self.results["runs"]
        runs.append(self.regime_run(f"{base}/lora_all_linear/{seed}", task_name, regime, seed, "lora_all_linear",
                                    targets="all_linear"))
        runs.append(self.regime_run(f"{base}/flexora_linear/{seed}", task_name, regime, seed, "flexora_linear",
                                    targets="all_linear", flexora_opts=self.flexora_opts(**search)))

    def planted(self, set_seed, targets, seed=0):
        """Teacher = SmolLM2 + a random LoRA delta on drawn blocks (the student's LoRA targets), or SmolLM2 itself for
        a student damaged there (`repair`); it answers prompts and the search runs on (prompt, teacher answer) pairs.
        Precision of the selection and of the top-k."""
        from .planted import planted_rows

        p = self.profile
        blocks = planted_blocks(set_seed)
        # the task's training split: its first examples do not depend on its size, so more prompts keep the first
        prompts = [e.prompt for e in self.task(p["planted_task"], p["planted_prompts"]).train]
        start = time.perf_counter()
        lora = dict(LORA, target_modules=TARGETS[targets])
        rows, teacher, max_length, student = planted_rows(self.args.planted_design, load_base(self.model_dir),
                                                          self.tokenizer, prompts, blocks, lora, targets, set_seed)
        gen_seconds = time.perf_counter() - start
        opts = self.flexora_opts(search_samples=p["planted_samples"], search_holdout_samples=len(prompts) // 4)
        key = f"planted/{set_seed}/{targets}" + (f"/{seed}" if seed else "")
        result = self.train_and_eval(key, None, seed, "planted", flexora_opts=opts,
                                     train_rows=rows, max_steps=1, evaluate=False, targets=targets,
                                     max_length=max_length, model=student(load_base(self.model_dir)))
        selected, planted = set(result["selected_layers"]), set(blocks)
        by_score = set(highest(result["scores"] or result["alpha"], len(planted)))  # by `selection_score`
        by_alpha = set(highest(result["alpha"], len(planted)))  # the gate's ranking in the same search, to compare
        result.update(planted_blocks=blocks, planted_set=set_seed, planted_task=p["planted_task"], teacher=teacher,
                      teacher_gen_seconds=round(gen_seconds, 1),
                      precision=len(selected & planted) / max(1, len(selected)),
                      recall=len(selected & planted) / len(planted), topk_selected=sorted(by_score),
                      topk_precision=len(by_score & planted) / len(planted),
                      gate_topk_precision=len(by_alpha & planted) / len(planted),
                      chance_precision=len(planted) / NUM_BLOCKS)
        self.results["planted"].append(result)

    def budget(self, samples):
        """The search alone (a 1-step fine-tune) on `samples` examples of a training pool as large as the largest
        budget; the test split is the main runs' one (drawn first), and their training set is part of the pool."""
        from .tasks import to_sft_rows

        p = self.profile
        holdout = p["regimes"]["learn"]["search"]["search_holdout_samples"]
        pool = self.task(p["budget_task"], max(p["budgets"]) + holdout)
        opts = self.flexora_opts(search_samples=samples, search_holdout_samples=holdout)
        seed = p.get("budget_seed", 0)  # seed 0's jobs keep their names of before
        key = f"budget/{p['budget_task']}/{samples}" + (f"/{seed}" if seed else "")
        result = self.train_and_eval(key, pool, seed, "budget", flexora_opts=opts, train_rows=to_sft_rows(pool.train),
                                     max_steps=1, evaluate=False)
        result["search_samples"] = samples
        self.results["budget"].append(result)

    def long(self, arm, seed=0):
        """One long run (one task; seed 0 unless `--long-seeds`): all-block LoRA, or Flexora with its default search
        options, on a training set as large as the run, so search / fine-tune and end to end / LoRA are measured at
        length. The data are the same for every seed; the seed draws the LoRA's start, the order and the search."""
        spec = self.profile["long"]
        task = self.task(spec["task"], spec["steps"] * BATCH)
        # Flexora's defaults, as a user gets them (the quick profile shrinks the budget to fit its toy data).
        opts = {**spec.get("search", {}), **self.args.flexora_options} if arm == "flexora" else None
        key = f"long/{arm}" + (f"/{seed}" if seed else "")
        result = self.train_and_eval(key, task, seed, arm, flexora_opts=opts, max_steps=spec["steps"], regime="long")
        self.results["long"].append(result)

    def speed(self, task_name):
        """Fine-tune only (TRL's default gradient checkpointing on, no search) on the upper blocks SPEED_BLOCKS: plain
        LoRA there via `layers_to_transform` vs Flexora given the same blocks, and LoRA on all."""
        task = self.task(task_name, self.profile["regimes"]["learn"]["n_train"])
        steps = self.profile["speed_steps"]
        for arm, kwargs in (("speed_lora_all", {}), ("speed_lora_upper", dict(layers=SPEED_BLOCKS)),
                            ("speed_flexora_upper", dict(flexora_opts={"selected_layers": SPEED_BLOCKS}))):
            self.results["speed"].append(self.train_and_eval(f"speed/{arm}", task, 0, arm, max_steps=steps,
                                                             evaluate=False, gradient_checkpointing=True, **kwargs))


def plan(profile, parts) -> list[tuple]:
    """All jobs, longest first so that the workers finish close together."""
    jobs = []
    if "budget" in parts:
        jobs += [("budget", b) for b in sorted(profile["budgets"], reverse=True)]
    if "long" in parts and profile.get("long"):
        for seed in profile.get("long_seeds", [0]):  # seed 0's jobs keep their names of before
            jobs += [("long", arm, *([seed] if seed else [])) for arm in ("flexora", "lora_all")]
    if "main" in parts:
        jobs += [("main", t, r, s) for s, (t, r) in itertools.product(profile["seeds"], profile["main"])]
    if "linear" in parts:
        jobs += [("linear", *spec) for spec in profile["linear"]]
    if "planted" in parts:
        jobs += [("planted", *spec) for spec in profile["planted"]]
    if "speed" in parts and profile.get("speed_steps"):
        jobs.append(("speed", profile["main"][0][0]))
    if "main" in parts:
        jobs += [("zero_shot", t) for t in dict.fromkeys(t for t, _ in profile["main"])]
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
    except (Exception, SystemExit):  # keep the other jobs going; `--resume` runs a failed job again. A SystemExit
        # (a task with too few examples, missing data) would end the worker, and the pool would wait for it forever.
        import traceback

        traceback.print_exc()
        results, error = {}, traceback.format_exc()[-600:]
    for part in results.values():
        for result in part:
            result["job"] = job_name(job)
    return job, results, error, round(time.perf_counter() - start, 1)


def write_json(path: Path, data, indent: int | None = None):
    """Replace `path` with `data` as JSON in one step: a process stopped mid-write leaves the previous file whole."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=indent))
    os.replace(tmp, path)


class Results:
    """results.json, rewritten (with results.md and results.png) after every job."""

    PARTS = ("runs", "planted", "budget", "long", "speed")

    def __init__(self, args, profile):
        default = RESULTS_DIR if args.profile == "full" else RESULTS_DIR / args.profile
        self.out = Path(args.out) if args.out else default
        self.out.mkdir(parents=True, exist_ok=True)
        self.path = self.out / "results.json"
        self.data = {"meta": meta(args, profile), "jobs": {}, **{part: [] for part in self.PARTS}}
        if args.resume and self.path.exists():
            old = json.loads(self.path.read_text())
            for key in (*self.PARTS, "jobs"):
                self.data[key] = old.get(key, self.data[key])
            self.data["meta"]["wall_seconds_before"] = old["meta"].get("wall_seconds", 0)
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
        write_json(self.path, self.data, indent=1)
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
        "profile": args.profile, "settings": profile, "lora": LORA, "all_linear": ALL_LINEAR,
        "flexora_options": args.flexora_options, "learning_rate": args.learning_rate, "precision": args.precision,
        "max_length": args.max_length, "planted_design": args.planted_design,
        "batch_size": BATCH, "workers": args.workers, "torch_threads": args.threads, "speed_blocks": SPEED_BLOCKS,
        "num_blocks": NUM_BLOCKS,
        "machine": machine(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "trl": trl.__version__, "peft": peft.__version__},
        "memory_method": "peak RSS of the process during the fine-tune phase (sampled every 20 ms from "
                         "/proc/self/statm, after gc + malloc_trim); growth = peak - RSS at fine-tune start",
        # shell-quoted, so that `add_peers` parses back a JSON --flexora-options as given
        "command": "python -m benchmarks.run " + shlex.join(sys.argv[1:]),
    }


def machine() -> dict:
    """The machine that ran a record's runs: figures from different CPUs differ in their last digits."""
    return {"cpu": _cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
            "ram_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)}


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

    offline_and_quiet()  # before the workers are spawned: they inherit it
    args = parse_args(argv)
    profile = profile_of(args)
    parts = set(args.parts.split(",")) if args.parts else {"main", "linear", "planted", "budget", "long", "speed"}
    results = Results(args, profile)
    jobs = [job for job in plan(profile, parts) if not results.done(job)]
    print(f"{len(jobs)} jobs on {args.workers} worker(s): {[job_name(j) for j in jobs]}", flush=True)
    start = time.perf_counter()
    # A fresh process per job (maxtasksperchild=1): no job's heap inflates the next one's memory figures.
    with multiprocessing.get_context("spawn").Pool(args.workers, maxtasksperchild=1) as pool:
        for job, part, error, seconds in pool.imap_unordered(run_job, [(job, args) for job in jobs]):
            print(f"[{time.strftime('%H:%M:%S')}] job {job_name(job)} {'FAILED' if error else 'done'} in "
                  f"{seconds:.0f} s", flush=True)
            results.data["meta"]["wall_seconds"] = round(results.data["meta"].get("wall_seconds_before", 0)
                                                         + time.perf_counter() - start, 1)
            results.add(job, part, error, seconds)
    results.data["meta"]["finished"] = not any(j["error"] for j in results.data["jobs"].values())
    results.save()
    print((results.out / "results.md").read_text())
    print(f"JSON: {results.path}")


if __name__ == "__main__":
    main()
