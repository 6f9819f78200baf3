"""The shipped demo data: well formed, and exactly what `scripts/make_demo_data.py` generates."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA_FILE = ROOT / "flexora_trl" / "data" / "demo_instructions.jsonl"
SCRIPT = ROOT / "scripts" / "make_demo_data.py"


def read_examples():
    return [json.loads(line) for line in DATA_FILE.read_text(encoding="utf-8").splitlines()]


def test_every_line_is_one_user_turn_and_one_assistant_answer():
    examples = read_examples()
    assert 1000 <= len(examples) <= 1500
    for example in examples:
        assert list(example) == ["messages"]
        user, assistant = example["messages"]
        assert user["role"] == "user" and assistant["role"] == "assistant"
        assert set(user) == set(assistant) == {"role", "content"}
        assert user["content"].strip() and assistant["content"].strip()


def test_prompts_are_distinct_and_short():
    turns = [(e["messages"][0]["content"], e["messages"][1]["content"]) for e in read_examples()]
    prompts = [prompt for prompt, _ in turns]
    assert len(set(prompts)) == len(prompts)  # a hold-out drawn from the data never repeats a training prompt
    # Characters, not tokens (no tokenizer in CI): at ~3-4 characters a token this stays far below 128 tokens
    # with the chat template (the longest example is 92 tokens with SmolLM2's).
    assert max(len(prompt) + len(answer) for prompt, answer in turns) < 250
    assert DATA_FILE.stat().st_size < 400_000


def test_regenerating_gives_identical_bytes(tmp_path):
    output = tmp_path / "demo.jsonl"
    subprocess.run([sys.executable, str(SCRIPT), "--output", str(output)], check=True, capture_output=True)
    assert output.read_bytes() == DATA_FILE.read_bytes()
