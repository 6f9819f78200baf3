"""Is a planted set identifiable at all? The single-block oracle: LoRA on one block alone, trained a few steps on the
planted teacher's answers, and the held-out loss drop it gives, block by block; and the loss gradient at the base.

    python -m benchmarks.oracle --planted 3:qv            # all 30 blocks, 12 steps each (~6 min on 2 quiet cores)
    python -m benchmarks.oracle --planted 3:qv --blocks 0,1 --steps 2   # a smoke run
    python -m benchmarks.oracle --planted 12:all_linear --blocks 2,13,25 --steps 24 --undamaged  # the same LoRAs on
                                                  # the undamaged base: what of a drop is not the repair

A selection score cannot be expected to find planted blocks that this oracle does not rank first; a planted design
should pass it before methods are measured on it. On the repair designs the record also gives the yardstick on the
same held-out rows: the damaged student's loss against the base's, and each planted block's damage undone alone.
Its 64 held-out rows are few: on 768 more rows of set 12 a LoRA's drop of 0.031 on the undamaged base was -0.004, and
one of 0.081 on the damaged student 0.018 (benchmarks/README.md, "What the oracle's drops are made of").
Results: benchmarks/results/oracle/<set>_<targets>_<design>[_undamaged][_blocks].json.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import time
from pathlib import Path

import torch

from .planted import REPAIR_DESIGNS, planted_rows, target_modules_by_block
from .run import (LORA, NUM_BLOCKS, PLANTED_DESIGNS, TARGETS, highest, integers, load_base, offline_and_quiet,
                  planted_blocks)
from .tasks import load_task

OUT = Path(__file__).resolve().parent / "results" / "oracle"


def batches(tokenizer, rows, size=8, max_length=64):
    """Prompt + answer token batches with the loss on the answer only, padded by TRL's SFT collator."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    collate = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)
    examples = []
    for row in rows:
        if "input_ids" in row:  # pretokenized, as the model wrote it (`planted.sampled_rows`)
            ids, labels = row["input_ids"], [t if m else -100 for t, m in zip(row["input_ids"], row["completion_mask"])]
        else:  # text, ended with EOS as TRL ends it
            prompt = tokenizer(row["prompt"])["input_ids"]
            answer = tokenizer(row["completion"])["input_ids"] + [tokenizer.eos_token_id]
            ids, labels = prompt + answer, [-100] * len(prompt) + answer
        examples.append({"input_ids": ids[:max_length], "labels": labels[:max_length]})
    return [collate(examples[start : start + size]) for start in range(0, len(examples), size)]


def gradient_at_base(model_dir, lora, train, student):
    """Per block: the squared norm of the loss gradient with respect to the LoRA target weights, at the student (the
    base, unless the design damages it)."""
    model = student(load_base(model_dir))
    model.requires_grad_(False)
    weights = [(block, module.weight) for _, block, module in target_modules_by_block(model, lora["target_modules"])]
    for _, weight in weights:
        weight.requires_grad_(True)
    for batch in train:
        model(**batch).loss.backward()
    energy = [0.0] * NUM_BLOCKS
    for block, weight in weights:
        energy[block] += float((weight.grad / len(train)).square().sum())
    return energy


def held_out_loss(model, val):
    """Per answer token over all of `val`, as the after-search scores weigh it (the mean of batch means had 2-4 times
    the standard error on the sampled rows, whose answers run from 1 to 48 tokens)."""
    from flexora_trl.scores import answer_tokens

    tokens = [answer_tokens(batch) for batch in val]
    model.eval()
    with torch.no_grad():
        return sum(float(model(**batch).loss) * count for batch, count in zip(val, tokens)) / sum(tokens)


def repair_reference(model_dir, val, damage):
    """The repair designs' yardstick on the oracle's own held-out rows: the damaged student's loss minus the base's
    (the most any repair can give there) and, per planted block, the drop from undoing its damage alone, exactly."""
    base = load_base(model_dir)
    damaged = held_out_loss(damage(copy.deepcopy(base)), val)
    exact = {}
    for block in damage.planted_blocks:
        others = {b: f for b, f in damage.fractions.items() if b != block}
        exact[block] = damaged - held_out_loss(damage(copy.deepcopy(base), others), val)
    return {"damaged_val_loss": damaged, "base_val_loss": held_out_loss(base, val), "exact_repair_drops": exact}


def fit_lora(model, lora, blocks, train, steps, lr, seed=0, scheduler="constant"):
    """A fresh LoRA on `blocks` only (its init drawn from `seed`), trained `steps` AdamW steps over `train` (cycled)
    at `lr` under transformers' `scheduler`; returns the PEFT model."""
    from peft import LoraConfig, get_peft_model
    from transformers import get_scheduler

    torch.manual_seed(seed)
    model = get_peft_model(model, LoraConfig(**lora, layers_to_transform=blocks, layers_pattern="layers"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    schedule = get_scheduler(scheduler, optimizer, num_warmup_steps=0, num_training_steps=steps)
    model.train()
    for step in range(steps):
        model(**train[step % len(train)]).loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
    return model


def single_block_drops(model_dir, lora, train, val, blocks, steps, lr, student):
    """Held-out loss drop after `steps` AdamW steps of LoRA on each block alone (the same seed for every block)."""
    base = student(load_base(model_dir))
    start_loss = held_out_loss(base, val)
    drops = {}
    for block in blocks:
        model = fit_lora(base, lora, [block], train, steps, lr)
        drops[block] = start_loss - held_out_loss(model, val)
        base = model.unload()
        print(f"block {block}: held-out loss drop {drops[block]:.4f}", flush=True)
    return start_loss, drops


def main(argv=None):
    offline_and_quiet()
    p = argparse.ArgumentParser(prog="python -m benchmarks.oracle", description=__doc__.split("\n\n")[0])
    p.add_argument("--planted", default="3:qv", help="planted set and LoRA targets, as set:targets")
    p.add_argument("--blocks", type=integers, default=None, help="comma-separated blocks (default: all)")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--design", choices=PLANTED_DESIGNS, default="balanced_rows",
                   help="greedy: the benchmark's first teacher (b_std 0.4 q,v / 0.2 all linear, 10 greedy tokens); "
                        "sampled: a delta sized to --target-kl per token, 48 sampled tokens; principal: the same with "
                        "the delta on the inputs' principal directions; repair: the base samples 48 tokens for a "
                        "student whose planted blocks lose part of their weights' top singular directions (sized to "
                        "--target-kl); balanced: repair with each planted block sized alone to an equal share of it "
                        "on a probe; balanced_rows (the default, as in benchmarks.run): repair with each planted "
                        "block's marginal KL (all damaged against all but it) an equal share, on the sampled rows")
    p.add_argument("--target-kl", type=float, default=0.1,
                   help="per-token KL(teacher || student) of the sampled designs")
    p.add_argument("--undamaged", action="store_true",
                   help="repair designs: train each block's LoRA on the undamaged base instead of the damaged "
                        "student (a drop there is a signal in the rows that is not the damage)")
    args = p.parse_args(argv)
    if args.undamaged and args.design not in REPAIR_DESIGNS:
        p.error(f"--undamaged needs a repair design (--design {' or '.join(REPAIR_DESIGNS)})")
    torch.set_num_threads(args.threads)
    from transformers import AutoTokenizer

    from flexora_trl.smollm2 import smollm2_path

    number, targets = args.planted.split(":")
    planted = planted_blocks(int(number))
    model_dir = smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tasks = [load_task(name, 256, 200, tokenizer=tokenizer, max_length=64)
             for name in ("hyperbaton", "intent_recognition")]
    prompts = [e.prompt for task in tasks for e in task.train + task.test][:256]  # as the benchmark's planted job
    lora = dict(LORA, target_modules=TARGETS[targets])
    start = time.perf_counter()
    rows, teacher, max_length, student = planted_rows(args.design, load_base(model_dir), tokenizer, prompts, planted,
                                                      lora, targets, int(number), target_kl=args.target_kl)
    random.Random(0).shuffle(rows)
    train = batches(tokenizer, rows[:192], max_length=max_length or 64)
    val = batches(tokenizer, rows[192:], max_length=max_length or 64)
    reference = repair_reference(model_dir, val, student) if args.design in REPAIR_DESIGNS else {}
    if args.undamaged:
        student = lambda model: model  # noqa: E731
    energy = gradient_at_base(model_dir, lora, train, student)
    blocks = args.blocks or list(range(NUM_BLOCKS))
    start_loss, drops = single_block_drops(model_dir, lora, train, val, blocks, args.steps, args.lr, student)

    def precision(scores):
        top = highest(scores, len(planted))
        return top, len(set(top) & set(planted)) / len(planted)

    result = {"planted_set": int(number), "targets": targets, "design": args.design, "planted_blocks": planted,
              "teacher": teacher, "undamaged": args.undamaged, **reference,
              "steps": args.steps, "lr": args.lr, "start_val_loss": start_loss, "drops": drops,
              "gradient_energy": energy, "seconds": round(time.perf_counter() - start, 1)}
    result["oracle_top"], result["oracle_precision"] = precision(drops)
    result["gradient_top"], result["gradient_precision"] = precision(dict(enumerate(energy)))
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / (f"{number}_{targets}{'' if args.design == 'greedy' else '_' + args.design}"
                  f"{'_undamaged' if args.undamaged else ''}{'' if args.blocks is None else '_blocks'}.json")
    path.write_text(json.dumps(result, indent=2))
    print(f"planted {planted}; oracle top {result['oracle_top']} (precision {result['oracle_precision']:.2f}); "
          f"gradient top {result['gradient_top']} (precision {result['gradient_precision']:.2f}); {path}")


if __name__ == "__main__":
    main()
