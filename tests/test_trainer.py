"""FlexoraSFTTrainer end to end on tiny real models: search -> selection -> fresh LoRA -> plain PEFT adapter."""

import json
import logging
import os

import pytest
import torch
from huggingface_hub import ModelCard
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, TrainerCallback

from flexora_trl.blocks import map_lora_blocks
from flexora_trl.record import RECORD_NAME, SelectionRecord
from tiny import StopAfterStep, flexora_trainer, lora_config

INPUT = torch.tensor([[5, 17, 42, 99, 7, 123, 64, 3]])


def adapter_tensors(directory):
    return load_file(os.path.join(directory, "adapter_model.safetensors"))


def record(directory) -> SelectionRecord:
    return SelectionRecord.read(str(directory))


class LogCollector(TrainerCallback):
    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs or {}))


def test_end_to_end_adapter_is_plain_peft_on_the_selection(tiny_llama_dir, chat_examples, tmp_path):
    trainer = flexora_trainer(tiny_llama_dir, tmp_path / "out", chat_examples)
    collector = LogCollector()
    trainer.add_callback(collector)
    trainer.train()
    trainer.save_model()

    chosen = record(tmp_path / "out")
    selected = chosen.selected_layers
    assert chosen.source == "search" and 1 <= len(selected) < 4
    assert chosen.lora_params_selected == chosen.lora_params_all_blocks * len(selected) // 4
    assert len(chosen.alpha_trajectory) == chosen.search_outer_steps > 0
    assert chosen.finetune_seconds > 0 and chosen.search_seconds > 0
    assert os.path.exists(tmp_path / "out" / "flexora_gates.png")

    with open(tmp_path / "out" / "adapter_config.json") as handle:
        config = json.load(handle)
    assert config["layers_to_transform"] == selected and config["layers_pattern"] == "layers"
    blocks_in_file = {trainer.flexora_blocks.block_of(name) for name in adapter_tensors(tmp_path / "out")}
    assert blocks_in_file == set(selected)

    # No gate hook is left on the trained model, and the adapter reloads to the same logits.
    assert not any(m._forward_hooks for n, m in trainer.model.named_modules() if "lora_B" in n)
    trainer.model.eval()
    with torch.no_grad():
        trained = trainer.model(INPUT).logits
        reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), tmp_path / "out")
        assert torch.equal(trained, reloaded.eval()(INPUT).logits)

    # The gates were logged through the trainer's own logging (what tensorboard/wandb callbacks receive).
    gate_logs = [log for log in collector.logs if "flexora/gate_0" in log]
    assert gate_logs and all(f"flexora/gate_{b}" in gate_logs[-1] for b in range(4))
    assert any("loss" in log for log in collector.logs)

    # The model card is TRL's, naming Flexora, its paper, the selected blocks and the record.
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert {"trl", "sft", "flexora"} <= set(card.data.tags)
    assert "huggingface.co/papers/2408.10774" in card.text and "Flexora SFT" in card.text
    assert f"blocks {', '.join(map(str, selected))}." in card.text and "flexora_selection.json" in card.text
    assert card.text.count("## Flexora layer selection") == 1


def test_gpt2_style_blocks_end_to_end(tiny_gpt2_dir, chat_examples, tmp_path):
    peft_config = lora_config(target_modules=["c_attn"], fan_in_fan_out=True)
    trainer = flexora_trainer(tiny_gpt2_dir, tmp_path, chat_examples, peft_config=peft_config,
                              selection_rule="top_k", selection_top_k=2)
    trainer.train()
    trainer.save_model()
    with open(tmp_path / "adapter_config.json") as handle:
        config = json.load(handle)
    assert config["layers_to_transform"] == record(tmp_path).selected_layers and config["layers_pattern"] == "h"
    assert len(config["layers_to_transform"]) == 2


def test_skipping_the_search_with_the_same_blocks_gives_the_same_adapter(tiny_llama_dir, chat_examples, tmp_path):
    searched = flexora_trainer(tiny_llama_dir, tmp_path / "search", chat_examples)
    searched.train()
    searched.save_model()
    selected = record(tmp_path / "search").selected_layers

    given = flexora_trainer(tiny_llama_dir, tmp_path / "given", chat_examples, selected_layers=selected)
    given.train()
    given.save_model()
    from_file = flexora_trainer(tiny_llama_dir, tmp_path / "file", chat_examples,
                                selection_file=str(tmp_path / "search" / RECORD_NAME))
    from_file.train()
    from_file.save_model()

    assert record(tmp_path / "given").source == "given" and record(tmp_path / "given").alpha is None
    reference = adapter_tensors(tmp_path / "search")
    for other in ("given", "file"):
        tensors = adapter_tensors(tmp_path / other)
        assert tensors.keys() == reference.keys()
        assert all(torch.equal(tensors[k], reference[k]) for k in reference)


def test_resume_skips_the_search_and_ends_with_the_same_adapter(tiny_llama_dir, chat_examples, tmp_path, caplog):
    full = flexora_trainer(tiny_llama_dir, tmp_path / "full", chat_examples, save_strategy="steps", save_steps=3)
    full.train()
    full.save_model()

    interrupted = flexora_trainer(tiny_llama_dir, tmp_path / "cut", chat_examples, save_strategy="steps", save_steps=3)
    interrupted.add_callback(StopAfterStep(3))  # the run dies right after its first checkpoint
    interrupted.train()
    assert os.path.exists(tmp_path / "cut" / "checkpoint-3" / RECORD_NAME)
    searched = record(tmp_path / "cut")

    resumed = flexora_trainer(tiny_llama_dir, tmp_path / "cut", chat_examples, save_strategy="steps", save_steps=3)
    with caplog.at_level(logging.INFO, logger="flexora_trl.trainer_mixin"):
        resumed.train(resume_from_checkpoint=True)
    resumed.save_model()
    assert "no new search" in caplog.text
    assert record(tmp_path / "cut").alpha == searched.alpha  # the record of the search, not a new one
    reference, tensors = adapter_tensors(tmp_path / "full"), adapter_tensors(tmp_path / "cut")
    assert tensors.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(tensors[key], reference[key], rtol=1e-5, atol=1e-6)


def test_an_earlier_run_in_output_dir_is_never_overwritten(tiny_llama_dir, chat_examples, tmp_path):
    first = flexora_trainer(tiny_llama_dir, tmp_path, chat_examples)
    first.train()
    before = (tmp_path / RECORD_NAME).read_text()
    second = flexora_trainer(tiny_llama_dir, tmp_path, chat_examples)
    with pytest.raises(FileExistsError, match="selection_file"):
        second.train()
    other_blocks = [b for b in range(4) if b not in record(tmp_path).selected_layers][:1]
    third = flexora_trainer(tiny_llama_dir, tmp_path, chat_examples, selected_layers=other_blocks)
    with pytest.raises(FileExistsError, match="earlier Flexora run"):
        third.train()
    assert (tmp_path / RECORD_NAME).read_text() == before
    # Reusing the earlier selection in the same directory is fine.
    flexora_trainer(tiny_llama_dir, tmp_path, chat_examples, selection_file=str(tmp_path / RECORD_NAME)).train()


def test_gradient_accumulation_checkpointing_and_eval_dataset(tiny_llama_dir, chat_examples, tmp_path):
    trainer = flexora_trainer(
        tiny_llama_dir, tmp_path, chat_examples[:64], eval_examples=chat_examples[64:],
        gradient_accumulation_steps=2, gradient_checkpointing=True, per_device_train_batch_size=4,
        search_validation="eval_dataset", search_samples=40,
    )
    trainer.train()
    chosen = record(tmp_path)
    assert chosen.search_inner_steps == 5  # ceil(40 samples / (4 per batch * 2 accumulated))
    assert chosen.search_samples == 40


def test_bf16_model_keeps_alpha_in_fp32(tiny_llama_dir, chat_examples, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.bfloat16)
    trainer = flexora_trainer(tiny_llama_dir, tmp_path, chat_examples, model=model, max_steps=2, bf16=True)
    collector = LogCollector()
    trainer.add_callback(collector)
    trainer.train()
    alpha = record(tmp_path).alpha
    assert all(isinstance(v, float) and v == v for v in alpha.values())
    assert any(v != 0 for v in alpha.values())
    # alpha's dtype, as the search logged it: gates computed from a bf16 alpha would all be bf16 numbers.
    logged = [v for log in collector.logs for key, v in log.items() if key.startswith("flexora/gate_")]
    gates = torch.tensor(logged, dtype=torch.float32)
    assert logged and not torch.equal(gates.to(torch.bfloat16).float(), gates)


def test_regex_target_modules_are_spelled_out_in_the_adapter(tiny_llama_dir, chat_examples, tmp_path):
    peft_config = lora_config(target_modules=r".*\.(q_proj|v_proj)")
    trainer = flexora_trainer(tiny_llama_dir, tmp_path, chat_examples, peft_config=peft_config,
                              selected_layers=[1, 3], max_steps=2)
    trainer.train()
    trainer.save_model()
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), tmp_path)
    blocks = map_lora_blocks(reloaded)
    lora_blocks = {blocks.block_of(n) for n, _ in reloaded.named_parameters() if "lora_" in n}
    assert lora_blocks == {1, 3}


# ---------------------------------------------------------------- errors, all before any training
def test_no_lora_is_an_error(tiny_llama_dir, chat_examples, tmp_path):
    with pytest.raises(ValueError, match="peft_config=LoraConfig"):
        flexora_trainer(tiny_llama_dir, tmp_path, chat_examples, peft_config=None)


def test_non_lora_peft_is_an_error(tiny_llama_dir, chat_examples, tmp_path):
    from peft import IA3Config

    with pytest.raises(ValueError, match="needs a LoRA adapter.*IA3"):
        flexora_trainer(tiny_llama_dir, tmp_path, chat_examples,
                        peft_config=IA3Config(target_modules=["k_proj", "down_proj"], feedforward_modules=["down_proj"],
                                              task_type="CAUSAL_LM"))


@pytest.mark.parametrize("config, message", [
    (dict(search_holdout_samples=96), "search_holdout_samples"),
    (dict(search_validation="eval_dataset"), "no `eval_dataset`"),
    (dict(selected_layers=[0, 7]), r"Selected blocks \[7\]"),
    (dict(selection_file="/nonexistent/flexora_selection.json"), "selection_file"),
    (dict(gate_lr=0.0), "gate_lr"),
    (dict(search_lr_scheduler="step"), "search_lr_scheduler.*constant.*linear.*cosine"),
])
def test_bad_setup_is_an_error_before_training(tiny_llama_dir, chat_examples, tmp_path, config, message):
    with pytest.raises(ValueError, match=message):
        flexora_trainer(tiny_llama_dir, tmp_path, chat_examples, **config)
    assert not os.path.exists(tmp_path / RECORD_NAME)


def test_empty_eval_dataset_is_an_error(tiny_llama_dir, chat_examples, tmp_path):
    trainer = flexora_trainer(tiny_llama_dir, tmp_path, chat_examples, search_validation="eval_dataset",
                              eval_examples=chat_examples[:4])
    trainer.eval_dataset = trainer.eval_dataset.select([])
    with pytest.raises(ValueError, match="has 0 example"):
        trainer.flexora_setup()


def test_passing_an_optimizer_is_an_error(tiny_llama_dir, chat_examples, tmp_path):
    from datasets import Dataset as HFDataset
    from transformers import AutoTokenizer

    from flexora_trl import FlexoraSFTConfig, FlexoraSFTTrainer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    optimizer = torch.optim.AdamW(model.parameters())
    with pytest.raises(ValueError, match="optimizers="):
        FlexoraSFTTrainer(model=model, args=FlexoraSFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none"),
                          train_dataset=HFDataset.from_list(chat_examples), peft_config=lora_config(),
                          processing_class=AutoTokenizer.from_pretrained(tiny_llama_dir),
                          optimizers=(optimizer, None))


def test_sharded_backends_are_refused_with_a_clear_message():
    """FSDP needs torchrun to even build TrainingArguments, so the check is exercised on its own here."""
    from types import SimpleNamespace

    from flexora_trl.checks import check_distributed_backend

    with pytest.raises(ValueError, match="does not support FSDP"):
        check_distributed_backend(SimpleNamespace(fsdp=["full_shard"], deepspeed_plugin=None))
    with pytest.raises(ValueError, match="ZeRO-3"):
        check_distributed_backend(SimpleNamespace(fsdp=[], deepspeed_plugin=SimpleNamespace(zero_stage=3)))


def test_non_finite_loss_mid_search_stops_with_the_last_good_alpha(tiny_llama_dir, chat_examples, tmp_path, caplog):
    from flexora_trl.gates import BlockGates
    from flexora_trl.search import GateSearch
    from flexora_trl.search_data import search_dataloaders

    trainer = flexora_trainer(tiny_llama_dir, tmp_path, chat_examples, loss_type="nll")
    train_loader, val_loader, _ = search_dataloaders(trainer)
    batches, val = list(train_loader)[:6], list(val_loader)
    weight = trainer.model.get_base_model().model.layers[1].mlp.down_proj.weight

    def overflowing_after_three_steps():
        """Real batches; before the 4th, a base weight overflows (as an fp16 activation or weight can)."""
        for index, batch in enumerate(batches):
            if index == 3:
                with torch.no_grad():
                    weight[0, 0] = float("inf")
            yield batch

    gates = BlockGates(trainer.flexora_blocks)
    with caplog.at_level(logging.WARNING, logger="flexora_trl.search"):
        result = GateSearch(trainer, gates, trainer.flexora_args).run(overflowing_after_three_steps(), val, 6)
    assert "non-finite" in result.stopped_early and "last good alpha" in caplog.text
    assert result.inner_steps == 3 and len(result.trajectory) == 3
    assert list(result.alpha.values()) == result.trajectory[-1] and all(v == v for v in result.alpha.values())


def test_a_search_that_never_has_a_finite_loss_is_an_error(tiny_llama_dir, chat_examples, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    with torch.no_grad():
        model.model.layers[2].mlp.down_proj.weight[0, 0] = float("nan")  # a corrupted checkpoint
    trainer = flexora_trainer(tiny_llama_dir, tmp_path, chat_examples, model=model)
    with pytest.raises(FloatingPointError, match="no gate update succeeded"):
        trainer.train()
    assert not os.path.exists(tmp_path / RECORD_NAME)


@pytest.mark.parametrize("size, message", [(0, "`train_dataset` is empty"), (10, "search_holdout_samples")])
def test_empty_or_tiny_training_set_is_an_error(tiny_llama_dir, chat_examples, tmp_path, size, message):
    with pytest.raises(ValueError, match=message):
        flexora_trainer(tiny_llama_dir, tmp_path, chat_examples[:size])


def test_a_search_subset_with_no_batch_is_an_error_not_a_hang(tiny_llama_dir, chat_examples, tmp_path):
    """With `dataloader_drop_last`, a search subset smaller than one batch gives an empty loader; the search used to
    cycle over it for ever. (A validation set under one batch is refused earlier, at set-up.)"""
    trainer = flexora_trainer(tiny_llama_dir, tmp_path, chat_examples, dataloader_drop_last=True, search_samples=4)
    with pytest.raises(ValueError, match="`search_samples`"):
        trainer.train()
    assert not os.path.exists(tmp_path / RECORD_NAME)


def test_same_seed_same_selection(tiny_llama_dir, chat_examples, tmp_path):
    runs = []
    for name in ("a", "b"):
        trainer = flexora_trainer(tiny_llama_dir, tmp_path / name, chat_examples, max_steps=1)
        trainer.train()
        runs.append(record(tmp_path / name))
    assert runs[0].alpha == runs[1].alpha and runs[0].selected_layers == runs[1].selected_layers


@pytest.mark.parametrize("scheduler, optimizer", [("constant", "adamw"), ("linear", "adamw"),
                                                  ("linear", "normalized_sgd")])
def test_the_search_learning_rate_follows_its_schedule(scheduler, optimizer, tiny_llama_dir, chat_examples,
                                                       tmp_path):
    logs = LogCollector()
    trainer = flexora_trainer(tiny_llama_dir, tmp_path, chat_examples, max_steps=1, logging_steps=1,
                              search_learning_rate=4e-3, search_lr_scheduler=scheduler, search_optimizer=optimizer)
    trainer.add_callback(logs)
    trainer.train()
    rates = [entry["flexora/search_learning_rate"] for entry in logs.logs if "flexora/search_learning_rate" in entry]
    steps = record(tmp_path).search_inner_steps
    assert len(rates) == steps >= 3 and rates[0] == pytest.approx(4e-3)
    if scheduler == "constant":
        assert rates == pytest.approx([4e-3] * steps)
    else:  # to zero after the last planned step: the last step takes 1 / steps of the peak
        assert rates == pytest.approx([4e-3 * (steps - i) / steps for i in range(steps)])
    assert record(tmp_path).options["search_optimizer"] == optimizer
