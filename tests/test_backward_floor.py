"""The fine-tune's backward pass stops at the lowest selected block, with the very same LoRA gradients."""

import pytest
import torch
from peft import get_peft_model
from transformers import AutoModelForCausalLM, TrainerCallback

import flexora_trl.trainer_mixin as trainer_mixin
from flexora_trl.backward_floor import BackwardFloor
from flexora_trl.blocks import map_lora_blocks
from tiny import flexora_trainer, lora_config

INPUT = torch.tensor([[5, 17, 42, 99, 7, 123, 64, 3, 9, 11]] * 2)


class CountBelow:
    """Counts the work done on block 0: its forward calls (recomputations included) and gradients reaching it."""

    def __init__(self, block):
        self.forwards = self.backwards = 0
        block.register_forward_pre_hook(self._count_forward)  # a pre-hook: a recomputation may stop early
        block.register_forward_hook(self._hook)

    def _count_forward(self, module, args):
        self.forwards += 1

    def _hook(self, module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        if torch.is_grad_enabled() and hidden.requires_grad:
            hidden.register_hook(self._count_grad)

    def _count_grad(self, grad):
        self.backwards += 1


def lora_on_upper_blocks(model_dir, checkpointing):
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                           lora_config(layers_to_transform=[2, 3], layers_pattern="layers"))
    with torch.no_grad():  # a non-zero B, so every LoRA weight gets a gradient
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.1)
    if checkpointing is None:
        model.enable_input_require_grads()  # what QLoRA's prepare_model_for_kbit_training does without checkpointing
    else:
        kwargs = {"use_reentrant": checkpointing == "reentrant"}
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.train()
    return model


def lora_grads(model):
    model.zero_grad()
    model(input_ids=INPUT, labels=INPUT).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("checkpointing", ["reentrant", "non_reentrant", None])
def test_same_lora_grads_without_any_backward_below_the_floor(tiny_llama_dir, checkpointing):
    model = lora_on_upper_blocks(tiny_llama_dir, checkpointing)
    counter = CountBelow(model.base_model.model.model.layers[0])
    reference = lora_grads(model)
    work_without = counter.forwards + counter.backwards
    assert work_without > 1  # the embeddings' grad hook sends the backward through block 0 (and recomputes it)

    floor = BackwardFloor(model, map_lora_blocks(model), selected=[2, 3])
    assert floor.block is not None
    counter.forwards = counter.backwards = 0
    grads = lora_grads(model)
    assert counter.forwards == 1 and counter.backwards == 0
    assert grads.keys() == reference.keys()
    for name in reference:
        torch.testing.assert_close(grads[name], reference[name], rtol=0, atol=0, msg=name)

    floor.remove()
    assert type(model.base_model.model.model.layers[2]).__name__ == "LlamaDecoderLayer"
    assert type(model.base_model.model.model.layers[2]) is type(model.base_model.model.model.layers[0])


def test_no_floor_when_something_below_is_trainable(tiny_llama_dir):
    model = lora_on_upper_blocks(tiny_llama_dir, "non_reentrant")
    model.base_model.model.model.embed_tokens.weight.requires_grad_(True)
    assert BackwardFloor(model, map_lora_blocks(model), selected=[2, 3]).block is None
    other = lora_on_upper_blocks(tiny_llama_dir, None)
    assert BackwardFloor(other, map_lora_blocks(other), selected=[0, 3]).block is None  # nothing below block 0


class CountBlockZeroForwards(TrainerCallback):
    def __init__(self):
        self.counter = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.counter = CountBelow(model.base_model.model.model.layers[0])


@pytest.mark.parametrize("use_floor", [True, False])
def test_fine_tune_with_checkpointing_skips_the_blocks_below(tiny_llama_dir, chat_examples, tmp_path, monkeypatch,
                                                            use_floor):
    """A real FlexoraSFTTrainer fine-tune on blocks [2, 3] with TRL's default gradient checkpointing: with the floor,
    block 0 runs once per micro-batch and no gradient reaches it; without it, every micro-batch back-propagates
    through block 0 (and, with the pinned transformers, recomputes it)."""
    if not use_floor:
        no_floor = lambda model, blocks, selected: BackwardFloor(model, blocks, [0])  # noqa: E731 (block 0: none)
        monkeypatch.setattr(trainer_mixin, "BackwardFloor", no_floor)
    count = CountBlockZeroForwards()
    trainer = flexora_trainer(tiny_llama_dir, tmp_path / "out", chat_examples, selected_layers=[2, 3], max_steps=3,
                              gradient_checkpointing=True)
    trainer.add_callback(count)
    trainer.train()
    micro_batches = 3
    if use_floor:
        assert count.counter.forwards == micro_batches and count.counter.backwards == 0
    else:
        assert count.counter.backwards == micro_batches and count.counter.forwards >= micro_batches
    assert type(trainer.model.base_model.model.model.layers[2]).__name__ == "LlamaDecoderLayer"
