"""`search_warm_start`: the fine-tune continues the search's training of the kept blocks, from the function the
search ended with, and the search's inner steps count toward the planned fine-tune (a resumed run included)."""

import os

import torch
from peft import get_peft_model
from transformers import AutoModelForCausalLM, TrainerCallback

from flexora_trl.adapter import lora_on_blocks, swap_in_search_adapter
from flexora_trl.blocks import map_lora_blocks
from flexora_trl.gates import BlockGates
from flexora_trl.record import SelectionRecord
from tiny import StopAfterStep, flexora_trainer, lora_config

INPUT = torch.tensor([[5, 17, 42, 99, 7, 123, 64, 3]])


class LoraBAtStart(TrainerCallback):
    """The largest |B| of the fine-tune's LoRA when its training begins (0 for a fresh LoRA)."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.largest_b = max(float(p.detach().abs().max()) for n, p in model.named_parameters() if "lora_B" in n)


def test_the_fine_tune_starts_from_the_function_the_search_ended_with(tiny_llama_dir):
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), lora_config())
    name, user = swap_in_search_adapter(model)
    blocks = map_lora_blocks(model)
    torch.manual_seed(0)
    for parameter_name, parameter in model.named_parameters():
        if "lora_B" in parameter_name:  # a trained search: B away from zero
            parameter.data.normal_(0.0, 0.1)
    selected = [1, 3]
    with BlockGates(blocks) as gates, torch.no_grad():
        gates.alpha.copy_(torch.tensor([0.3, -0.2, 0.5, 0.1]))
        for position, block in enumerate(gates.blocks):
            if block not in selected:
                gates.mask[position] = 0.0  # the fine-tune has no LoRA there
        search_logits = model(input_ids=INPUT).logits
        warm_gates = dict(zip(gates.blocks, gates.values().tolist()))
    assert warm_gates[1] != 1.0 and warm_gates[3] != 1.0
    with torch.no_grad():
        plain_logits = model(input_ids=INPUT).logits  # every block's LoRA, no gates: not what the search computed
    assert not torch.allclose(plain_logits, search_logits, atol=1e-4)

    lora_on_blocks(model, blocks, selected, name, user, warm_gates=warm_gates)
    assert model.peft_config[name].layers_to_transform == selected
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=INPUT).logits, search_logits, rtol=1e-5, atol=1e-5)


def test_the_search_steps_count_toward_the_planned_fine_tune(tiny_llama_dir, chat_examples, tmp_path):
    # 96 examples less 16 held out... the fine-tune trains on all 96: 12 batches of 8, 2 epochs = 24 planned steps
    common = dict(max_steps=-1, num_train_epochs=2, search_steps=5, search_samples=None)
    warm = flexora_trainer(tiny_llama_dir, tmp_path / "warm", chat_examples, search_warm_start=True, **common)
    fresh = flexora_trainer(tiny_llama_dir, tmp_path / "fresh", chat_examples, **common)
    starts = {}
    for label, trainer in (("warm", warm), ("fresh", fresh)):
        starts[label] = LoraBAtStart()
        trainer.add_callback(starts[label])
        trainer.train()
    assert warm.flexora_record.search_plan["finetune_steps"] == fresh.state.global_step == 24
    assert warm.flexora_record.search_inner_steps == 5 and warm.state.global_step == 24 - 5
    assert warm.args.max_steps == -1  # the user's arguments are given back as they were
    assert starts["fresh"].largest_b == 0.0 and starts["warm"].largest_b > 0.0
    assert warm.flexora_record.selected_layers == fresh.flexora_record.selected_layers  # the same search


def test_a_resumed_warm_start_run_ends_where_the_whole_run_does(tiny_llama_dir, chat_examples, tmp_path):
    settings = dict(search_warm_start=True, search_steps=2, search_samples=None, max_steps=8, save_strategy="steps",
                    save_steps=3)
    whole = flexora_trainer(tiny_llama_dir, tmp_path / "whole", chat_examples, **settings)
    whole.train()
    assert whole.state.global_step == 8 - 2

    interrupted = flexora_trainer(tiny_llama_dir, tmp_path / "cut", chat_examples, **settings)
    interrupted.add_callback(StopAfterStep(3))
    interrupted.train()
    assert os.path.isdir(tmp_path / "cut" / "checkpoint-3")
    resumed = flexora_trainer(tiny_llama_dir, tmp_path / "cut", chat_examples, **settings)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 8 - 2
    assert SelectionRecord.read(str(tmp_path / "cut")).alpha == whole.flexora_record.alpha
