"""Real `axolotl train` / `axolotl merge-lora` runs with the Flexora plugin on a tiny local Llama (CPU, no network)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

pytest.importorskip("axolotl")

from axolotl_helpers import (  # noqa: E402
    RECIPES, REPO, alpaca_rows, axolotl_cli, base_config, run, write_config, write_jsonl,
)
from flexora_trl.record import SelectionRecord  # noqa: E402
from tiny import make_examples  # noqa: E402

pytestmark = pytest.mark.slow


def load_tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def axolotl_train(cfg: str, cwd: Path, *options: str) -> str:
    """`axolotl train cfg [options]`; returns its output, and checks that no example was dropped as too long."""
    result = run(axolotl_cli() + ["train", cfg, *options], cwd=cwd)
    output = result.stdout + result.stderr
    assert not re.search(r"Dropped [1-9]\d* (short )?sequences", output)
    return output


def block_of(name: str) -> int:
    """The block of a PEFT model's (or its saved adapter's) parameter, by the map Flexora selects with."""
    from flexora_trl.blocks import BlockMap

    return BlockMap(stack="base_model.model.model.layers", pattern="layers", num_blocks=0, modules={}).block_of(name)


def check_flexora_output(out: Path, num_layers: int) -> list[int]:
    """The selection record and the saved adapter agree, and the adapter is plain PEFT on the chosen blocks only."""
    record = SelectionRecord.read(str(out))
    adapter = json.loads((out / "adapter_config.json").read_text())
    selected = record.selected_layers
    assert record.num_layers == num_layers
    assert selected and set(selected) <= set(range(num_layers))
    assert adapter["layers_to_transform"] == selected
    assert adapter["layers_pattern"] == "layers"
    weights = load_tensors(out / "adapter_model.safetensors")
    assert {block_of(key) for key in weights} == set(selected)
    assert record.lora_params_selected * num_layers == record.lora_params_all_blocks * len(selected)
    # Axolotl's end-of-training model card, with the Flexora section once and the tag
    card = (out / "README.md").read_text()
    assert card.count("## Flexora layer selection") == 1 and f"blocks {', '.join(map(str, selected))}." in card
    assert "- flexora" in card.split("---")[1]  # the card's YAML metadata: tags
    return selected


def lora_blocks_after_loading(base_dir: str, out: Path) -> set[int]:
    """Load the saved adapter with plain PEFT and report the blocks that got LoRA layers."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), str(out))
    return {block_of(name) for name, module in model.named_modules() if isinstance(module, LoraLayer)}


def test_alpaca_with_the_default_launcher_then_merge_lora(tiny_llama_dir, tmp_path):
    data = write_jsonl(tmp_path / "alpaca.jsonl", alpaca_rows(64))
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "cfg.yml", base_config(
        tiny_llama_dir, str(out), [{"path": data, "type": "alpaca", "ds_type": "json"}]))

    axolotl_train(cfg, tmp_path)
    selected = check_flexora_output(out, num_layers=4)
    assert lora_blocks_after_loading(tiny_llama_dir, out) == set(selected)

    run(axolotl_cli() + ["merge-lora", cfg, f"--lora-model-dir={out}"], cwd=tmp_path)
    base = load_tensors(Path(tiny_llama_dir) / "model.safetensors")
    merged = load_tensors(out / "merged" / "model.safetensors")
    lora = load_tensors(out / "adapter_model.safetensors")
    scaling = 8 / 4  # lora_alpha / lora_r of base_config
    for key, weight in base.items():
        prefix = "base_model.model." + key.removesuffix(".weight")
        if f"{prefix}.lora_A.weight" in lora:
            delta = scaling * lora[f"{prefix}.lora_B.weight"] @ lora[f"{prefix}.lora_A.weight"]
            assert delta.abs().max() > 0
            assert (merged[key] - weight - delta).abs().max() < 1e-5, key
        else:
            assert (merged[key] == weight).all(), f"{key} changed but has no LoRA"


def test_unrolled_hypergradient_with_axolotls_reentrant_checkpointing(tiny_llama_dir, tmp_path):
    data = write_jsonl(tmp_path / "alpaca.jsonl", alpaca_rows(64))
    out = tmp_path / "out"
    flexora = {"search_samples": 16, "search_holdout_samples": 8, "hypergradient": "unrolled", "unroll_steps": 2}
    cfg = write_config(tmp_path / "cfg.yml", base_config(
        tiny_llama_dir, str(out), [{"path": data, "type": "alpaca", "ds_type": "json"}],
        gradient_checkpointing=True, flexora=flexora))

    axolotl_train(cfg, tmp_path, "--launcher", "python")
    check_flexora_output(out, num_layers=4)
    record = SelectionRecord.read(str(out))
    assert record.options["hypergradient"] == "unrolled" and record.search_outer_steps > 0
    assert any(value != 0 for value in record.alpha.values())


def test_chat_template_with_the_python_launcher_and_the_eval_split(tiny_llama_dir, tmp_path):
    data = write_jsonl(tmp_path / "chat.jsonl", make_examples(64))
    out = tmp_path / "out"
    flexora = {"search_samples": 24, "search_validation": "eval_dataset", "search_val_batches": 2,
               "selection_rule": "top_k", "selection_top_k": 2}
    cfg = write_config(tmp_path / "cfg.yml", base_config(
        tiny_llama_dir, str(out),
        [{"path": data, "type": "chat_template", "field_messages": "messages", "ds_type": "json"}],
        chat_template="tokenizer_default", val_set_size=0.25, eval_steps=2, flexora=flexora))

    output = axolotl_train(cfg, tmp_path, "--launcher", "python")
    assert "'eval_loss'" in output  # Axolotl's evaluation runs on the fine-tuned, restricted adapter
    selected = check_flexora_output(out, num_layers=4)
    record = SelectionRecord.read(str(out))
    assert len(selected) == 2
    assert record.source == "search"
    assert {k: record.options[k] for k in flexora} == flexora
    top_two = sorted(record.alpha, key=lambda block: (-record.alpha[block], block))[:2]
    assert selected == sorted(top_two)


def test_qlora_on_a_4bit_base(tiny_llama_dir, tmp_path):
    """The QLoRA path (bitsandbytes 4-bit base, LoRA on every linear layer) searches and saves a plain adapter."""
    pytest.importorskip("bitsandbytes")
    data = write_jsonl(tmp_path / "alpaca.jsonl", alpaca_rows(64))
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "cfg.yml", base_config(
        tiny_llama_dir, str(out), [{"path": data, "type": "alpaca", "ds_type": "json"}],
        adapter="qlora", load_in_4bit=True, lora_target_linear=True, lora_target_modules=None))
    axolotl_train(cfg, tmp_path, "--launcher", "python")
    check_flexora_output(out, num_layers=4)
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert set(adapter["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                              "down_proj"}


def test_dora_from_the_config_is_what_the_fine_tune_trains(tiny_llama_dir, tmp_path):
    """`peft_use_dora: true`: the search runs plain LoRA gates, the saved adapter is DoRA on the selected blocks."""
    data = write_jsonl(tmp_path / "alpaca.jsonl", alpaca_rows(64))
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "cfg.yml", base_config(
        tiny_llama_dir, str(out), [{"path": data, "type": "alpaca", "ds_type": "json"}], peft_use_dora=True))
    axolotl_train(cfg, tmp_path, "--launcher", "python")
    selected = check_flexora_output(out, num_layers=4)
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["use_dora"] is True
    magnitudes = {block_of(key) for key in load_tensors(out / "adapter_model.safetensors") if "magnitude" in key}
    assert magnitudes == set(selected)


def test_resume_from_a_checkpoint_keeps_the_selection(tiny_llama_dir, tmp_path):
    """`resume_from_checkpoint` restores the interrupted run's blocks from the record; it never searches again."""
    data = write_jsonl(tmp_path / "alpaca.jsonl", alpaca_rows(64))
    out = tmp_path / "out"
    cfg = base_config(tiny_llama_dir, str(out), [{"path": data, "type": "alpaca", "ds_type": "json"}],
                      save_strategy="steps", save_steps=2, max_steps=4)
    first = axolotl_train(write_config(tmp_path / "cfg.yml", cfg), tmp_path, "--launcher", "python")
    selected = check_flexora_output(out, num_layers=4)
    assert "Flexora search" in first

    cfg.update(resume_from_checkpoint=str(out / "checkpoint-2"), max_steps=6)
    resumed = axolotl_train(write_config(tmp_path / "resume.yml", cfg), tmp_path, "--launcher", "python")
    assert "Flexora search" not in resumed
    assert check_flexora_output(out, num_layers=4) == selected
    assert json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())["global_step"] == 6


def test_cpu_recipe_on_smollm2_with_a_short_budget(tmp_path):
    """The shipped CPU recipe as a user runs it from the repo root, on SmolLM2-135M-Instruct, with fewer steps."""
    smollm2 = pytest.importorskip("flexora_trl.smollm2")
    try:
        model_dir = smollm2.smollm2_path()
    except FileNotFoundError as missing:
        pytest.skip(str(missing))
    cfg = yaml.safe_load((RECIPES / "smollm2-135m-flexora-cpu.yml").read_text())
    out = tmp_path / "out"
    cfg.update(base_model=model_dir, output_dir=str(out), dataset_prepared_path=str(tmp_path / "prepared"),
               max_steps=2, val_set_size=0.0, eval_steps=None)
    cfg["flexora"].update(search_samples=8, search_holdout_samples=8, search_val_batches=1)
    cfg = {k: v for k, v in cfg.items() if v is not None}
    axolotl_train(write_config(tmp_path / "cfg.yml", cfg), REPO, "--launcher", "python")
    check_flexora_output(out, num_layers=30)


def test_sample_packing_in_the_search_and_the_fine_tune(tiny_llama_dir, tmp_path):
    """Axolotl's multipack batches (several examples per row, position ids restarting) through the search, its
    validation steps and the fine-tune. On a CPU the attention is not decontaminated across a row's examples, as
    Axolotl warns; that is the attention backend's business (flash attention on a GPU), the same with or without
    Flexora."""
    data = write_jsonl(tmp_path / "alpaca.jsonl", alpaca_rows(96))
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "cfg.yml", base_config(
        tiny_llama_dir, str(out), [{"path": data, "type": "alpaca", "ds_type": "json"}], sample_packing=True,
        micro_batch_size=1, sequence_len=1024))  # rows of ~210 tokens: about four to a packed row
    output = axolotl_train(cfg, tmp_path)
    assert '"sample_packing": true' in output and '"eval_sample_packing": true' in output
    record = SelectionRecord.read(str(out))
    assert record.search_inner_steps > 0 and len(record.alpha_trajectory) == record.search_outer_steps > 0
    # One pass over the 32 search examples, one packed row per step: the search's rows hold several examples each.
    assert record.search_samples == 32 and record.search_inner_steps < 32 // 2
    check_flexora_output(out, num_layers=4)
