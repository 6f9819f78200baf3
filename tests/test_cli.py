"""`flexora-sft --config recipe.yaml`, end to end on a tiny local model, as a user runs it."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from flexora_trl.record import SelectionRecord
from tiny import make_examples

REPO = os.path.join(os.path.dirname(__file__), "..")


@pytest.mark.slow
def test_flexora_sft_command_with_a_yaml_config(tiny_llama_dir, tmp_path):
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(example) + "\n" for example in make_examples(64)))
    recipe = yaml.safe_load(open(os.path.join(REPO, "recipes", "trl-smollm2-flexora-cpu.yaml")))
    recipe.update(
        model_name_or_path=tiny_llama_dir, datasets=[{"path": "json", "data_files": str(data), "split": "train"}],
        output_dir=str(tmp_path / "out"), max_steps=3, search_samples=16, search_holdout_samples=8, lora_r=4,
        lora_alpha=8, max_length=64,
    )
    config = tmp_path / "recipe.yaml"
    config.write_text(yaml.safe_dump(recipe))
    command = shutil.which("flexora-sft") or sys.executable
    args = [command] if command != sys.executable else [sys.executable, "-m", "flexora_trl.cli"]
    done = subprocess.run(args + ["--config", str(config), "--selection_rule", "top_k", "--selection_top_k", "2"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    record = SelectionRecord.read(str(tmp_path / "out"))
    adapter = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert len(record.selected_layers) == 2  # the command-line override won over the YAML's `positive`
    assert adapter["layers_to_transform"] == record.selected_layers and adapter["r"] == 4
    assert "Flexora: LoRA on blocks" in done.stdout


def test_bad_option_on_the_command_line_names_the_key(tmp_path):
    done = subprocess.run([sys.executable, "-m", "flexora_trl.cli", "--model_name_or_path", "x", "--output_dir",
                           str(tmp_path), "--gate_lr", "-1"], capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "`gate_lr` must be a number > 0" in done.stderr


@pytest.mark.parametrize("recipe, search_samples", [("trl-smollm2-flexora-cpu.yaml", 256),
                                                    ("trl-llama3-8b-flexora-ddp.yaml", 4800)])
def test_trl_recipes_parse(recipe, search_samples, monkeypatch):
    """Each TRL recipe is a valid `flexora-sft --config` (parsed only: no model or data is loaded)."""
    from flexora_trl.cli import make_parser

    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    script_args, training_args, model_args, _ = make_parser().parse_args_and_config(
        args=["--config", os.path.join(REPO, "recipes", recipe), "--bf16", "false", "--use_cpu", "true"]
    )
    assert model_args.use_peft and model_args.lora_target_modules == ["q_proj", "v_proj"]
    assert training_args.selection_rule == "positive" and training_args.search_samples == search_samples
