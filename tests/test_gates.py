"""Gates on real PEFT LoRA models: identity at init, linear in g, and the inner/outer gradient isolation."""

import pytest
import torch
from peft import get_peft_model
from transformers import AutoModelForCausalLM

from flexora_trl.blocks import map_lora_blocks
from flexora_trl.gates import BlockGates, gate_values
from flexora_trl.search import GateSearch
from flexora_trl.search_data import search_dataloaders
from tiny import lora_config

INPUT = torch.tensor([[5, 17, 42, 99, 7, 123, 64, 3]])


def lora_model(model_dir, **overrides):
    torch.manual_seed(0)
    # init_lora_weights=False gives a non-zero B, so the LoRA branch really contributes to the output.
    settings = dict(init_lora_weights=False, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj"])
    settings.update(overrides)
    return get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), lora_config(**settings)).eval()


@pytest.mark.parametrize("count", [1, 4, 7, 30, 41, 47, 80])
def test_gate_values_are_exactly_one_at_zero(count):
    assert torch.equal(gate_values(torch.zeros(count)), torch.ones(count))


def test_gate_values_are_count_times_softmax():
    alpha = torch.randn(9, dtype=torch.float64)
    torch.testing.assert_close(gate_values(alpha), 9 * torch.softmax(alpha, 0))


def test_gates_at_init_give_plain_lora_outputs_exactly(tiny_llama_dir):
    model = lora_model(tiny_llama_dir)
    with torch.no_grad():
        plain = model(INPUT).logits
        gates = BlockGates(map_lora_blocks(model))
        gated = model(INPUT).logits
        with gates.differentiable():
            gated_live = model(INPUT).logits
    assert torch.equal(plain, gated) and torch.equal(plain, gated_live)
    gates.remove()


def test_gate_scales_the_lora_branch_linearly(tiny_llama_dir):
    """Gate g on a block == LoRA scaling multiplied by g on that block's modules (the paper's equation)."""
    model = lora_model(tiny_llama_dir)
    block_map = map_lora_blocks(model)
    gates = BlockGates(block_map)
    with torch.no_grad():
        gates.alpha.copy_(torch.tensor([0.7, -0.2, 0.1, -0.6]))
        gated = model(INPUT).logits
        values = gates.values()
        gates.remove()
        for position, block in enumerate(gates.blocks):
            for _, layer in block_map.modules[block]:
                layer.scaling["default"] *= values[position].item()
        scaled = model(INPUT).logits
    torch.testing.assert_close(gated, scaled, rtol=1e-5, atol=1e-5)


def test_gpt2_blocks_are_mapped(tiny_gpt2_dir):
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir),
                           lora_config(target_modules=["c_attn", "c_fc"], fan_in_fan_out=True))
    block_map = map_lora_blocks(model)
    assert block_map.pattern == "h" and block_map.blocks == [0, 1, 2, 3] and block_map.num_blocks == 4
    assert all(len(entries) == 2 for entries in block_map.modules.values())


def test_lora_outside_blocks_is_a_clear_error(tiny_llama_dir):
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama_dir),
                           lora_config(target_modules=["q_proj", "lm_head"]))
    with pytest.raises(ValueError, match="not inside a block stack.*lm_head"):
        map_lora_blocks(model)


def test_outer_step_reaches_alpha_only_and_inner_step_lora_only(tiny_llama_dir, chat_examples, tmp_path):
    from tiny import flexora_trainer

    trainer = flexora_trainer(tiny_llama_dir, tmp_path, chat_examples)
    gates = BlockGates(trainer.flexora_blocks)
    search = GateSearch(trainer, gates, trainer.flexora_args)
    train_loader, val_loader, _ = search_dataloaders(trainer)
    batches = [next(iter(train_loader))]
    val = [next(iter(val_loader))]

    # Inner step: LoRA moves, alpha gets no gradient.
    before = [p.detach().clone() for p in search.lora_params]
    search._inner_step(batches)
    assert gates.alpha.grad is None
    moved = [not torch.equal(b, p) for b, p in zip(before, search.lora_params)]
    assert any(moved)  # B moves at once; A's gradient is zero while B is still zero

    # Outer step: alpha moves; LoRA weights, their grads and the inner optimizer state do not.
    weights = [p.detach().clone() for p in search.lora_params]
    optimizer_state = {k: {n: t.clone() for n, t in v.items() if torch.is_tensor(t)}
                       for k, v in search.inner_optimizer.state.items()}
    search._outer_step(val, batches)
    assert gates.alpha.grad is not None and gates.alpha.grad.abs().sum() > 0
    assert not torch.equal(gates.alpha.detach(), torch.zeros_like(gates.alpha))
    assert all(p.grad is None for p in search.lora_params)
    assert all(torch.equal(w, p) for w, p in zip(weights, search.lora_params))
    for key, state in search.inner_optimizer.state.items():
        assert all(torch.equal(state[n], t) for n, t in optimizer_state[key].items())
    assert all(p.requires_grad for p in search.lora_params)
    gates.remove()
