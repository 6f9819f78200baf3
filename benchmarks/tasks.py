"""The benchmark's tasks: multiple-choice tasks from the `bigbench==1.0.0` sdist, read from a local cache (never
committed), multiple-choice tasks the benchmark generates (`generated.py`), and one generative chat task built from the
project's own instruction data.

Only the chosen `task.json` files are extracted, into `~/.cache/flexora/bigbench/<task>/task.json`
(`$FLEXORA_CACHE/bigbench` if set). The loader never downloads anything; when a file is missing it prints the commands.
The generative task, `instructions`, is `flexora_trl/data/demo_instructions.jsonl` (written by
`scripts/make_demo_data.py`, no third-party data): the user turn is the prompt under the model's chat template, the
assistant turn plus the end-of-turn token is the one "choice" (its loss is the held-out answer loss), and greedy
generation is scored by exact match.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .generated import GENERATORS, generated_examples

SDIST = "bigbench==1.0.0"
SDIST_URL_HINT = "https://pypi.org/simple/bigbench/"

# Short prompts: the task's question in one line, then the answer after "Answer:". Choices are scored as " <choice>".
TEMPLATES = {
    "sports_understanding": "Is the following sentence plausible? {input}\nAnswer:",
    "navigate": "If you follow these instructions, do you return to the starting point? {input}\nAnswer:",
    "implicatures": "Does Speaker 2 mean yes or no? {input}\nAnswer:",
    "hyperbaton": "{input}\nAnswer:",
    "strategyqa": "Question: {input}\nAnswer:",
    "intent_recognition": "What is the intent of the utterance? {input}\nIntent:",
    "metaphor_boolean": "Does the second sentence paraphrase the metaphor? {input}\nAnswer:",
    "reasoning_about_colored_objects": "{input}\nAnswer:",
    "vitaminc_fact_verification": "Is the claim true, false or neither, given the context? {input}\nAnswer:",
}
GENERATIVE = {"instructions": Path(__file__).resolve().parents[1] / "flexora_trl" / "data" / "demo_instructions.jsonl"}
MAX_LENGTH = {"instructions": 96}  # the chat template's system turn alone is ~20 tokens


def cache_dir() -> Path:
    root = os.environ.get("FLEXORA_CACHE") or Path.home() / ".cache" / "flexora"
    return Path(root).expanduser() / "bigbench"


def missing_message(task: str) -> str:
    cache = cache_dir()
    return (
        f"BIG-bench task file {cache / task / 'task.json'} not found. It comes from the PyPI sdist {SDIST} (358 MB); "
        "extract only the task files you need (the sdist's metadata step fails under `pip download`, so fetch the "
        "file itself from the PyPI simple index):\n\n"
        f"    mkdir -p ~/.cache/flexora/bigbench-sdist {cache}\n"
        f"    URL=$(curl -s {SDIST_URL_HINT} | grep -o 'https://[^\"#]*bigbench-1.0.0.tar.gz' | head -1)\n"
        "    curl -L -o ~/.cache/flexora/bigbench-sdist/bigbench-1.0.0.tar.gz \"$URL\"\n"
        f"    tar xzf ~/.cache/flexora/bigbench-sdist/bigbench-1.0.0.tar.gz -C {cache} --strip-components=3 \\\n"
        f"        bigbench-1.0.0/bigbench/benchmark_tasks/{task}/task.json\n\n"
        "(sha256 of the sdist: 1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2). "
        "On 2026-12-06 PyPI listed only bigbench 0.0.1: the 1.0.0 sdist is gone from it, so use a copy kept from "
        "before, or the same file in BIG-bench's GitHub repository (bigbench/benchmark_tasks/<task>/task.json), "
        f"or a task the benchmark generates itself ({', '.join(sorted(GENERATORS))}). Never commit the data."
    )


@dataclass
class Example:
    prompt: str
    choices: list[str]
    answer: int  # index of the correct choice
    messages: list[dict] | None = None  # generative task: the user and assistant turns, for TRL's chat template


@dataclass
class TaskData:
    name: str
    train: list[Example]
    test: list[Example]
    generative: bool = False

    @property
    def chance(self) -> float | None:
        return None if self.generative else float(np.mean([1.0 / len(e.choices) for e in self.test]))


def task_max_length(name: str, default: int) -> int:
    return max(default, MAX_LENGTH.get(name, default))


def load_task(name: str, n_train: int, n_test: int, split_seed: int = 1234, tokenizer=None,
              max_length: int | None = None) -> TaskData:
    """Fixed-seed split of the task's examples into disjoint test and train sets (test drawn first).

    With a tokenizer and max_length, examples whose prompt + longest choice do not fit are dropped before splitting,
    so nothing is truncated in training or scoring.
    """
    if name in GENERATIVE:
        examples = _chat_examples(GENERATIVE[name], tokenizer)
    elif name in GENERATORS:
        examples = [Example(prompt, [f" {c}" for c in choices], answer)
                    for prompt, choices, answer in generated_examples(name)]
    else:
        examples = _bigbench_examples(name)
    if tokenizer is not None and max_length is not None:
        def fits(e):
            return max(len(tokenizer(e.prompt + c)["input_ids"]) for c in e.choices) + 1 <= max_length
        examples = [e for e in examples if fits(e)]
    order = np.random.default_rng(split_seed).permutation(len(examples))
    if n_test + n_train > len(examples):
        raise SystemExit(f"{name}: {len(examples)} usable examples, fewer than n_test + n_train = {n_test + n_train}")
    test = [examples[i] for i in order[:n_test]]
    train = [examples[i] for i in order[n_test : n_test + n_train]]
    return TaskData(name, train, test, generative=name in GENERATIVE)


def _chat_examples(path: Path, tokenizer) -> list[Example]:
    """User turn under the chat template (with the assistant's header) as the prompt; the answer plus the end-of-turn
    token as the single continuation, so its loss includes knowing when to stop."""
    if tokenizer is None:
        raise ValueError("the generative task needs the tokenizer (its prompts use the chat template)")
    examples = []
    with open(path) as handle:
        for line in handle:
            messages = json.loads(line)["messages"]
            prompt = tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
            answer = messages[1]["content"] + tokenizer.eos_token
            examples.append(Example(prompt, [answer], 0, messages=messages))
    return examples


def _bigbench_examples(name: str) -> list[Example]:
    path = cache_dir() / name / "task.json"
    if not path.is_file():
        raise SystemExit(missing_message(name))
    with open(path) as handle:
        raw = json.load(handle)
    template = TEMPLATES.get(name, "{input}\nAnswer:")
    examples = []
    for item in raw["examples"]:
        scores = item.get("target_scores")
        if not scores:
            continue
        choices = list(scores)
        answer = max(range(len(choices)), key=lambda i: scores[choices[i]])
        if sum(1 for c in choices if scores[c] == scores[choices[answer]]) != 1:
            continue  # ambiguous gold
        prompt = template.format(input=" ".join(item["input"].split()))
        examples.append(Example(prompt, [f" {c}" for c in choices], answer))
    return examples


def to_sft_rows(examples: list[Example]) -> list[dict]:
    """Prompt-completion rows for TRL (loss on the completion only): the correct choice is the completion; for the
    generative task, conversational rows that TRL renders with the model's chat template."""
    return [{"prompt": e.messages[:1], "completion": e.messages[1:]} if e.messages else
            {"prompt": e.prompt, "completion": e.choices[e.answer]} for e in examples]
