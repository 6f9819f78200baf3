"""`search_group_sparsity`: the group-lasso penalty's strength and gradient, on a real trainer's search (tiny GPT-2,
float64)."""

import pytest
import torch

from tiny import float64_search

FACTOR = 0.5


def test_strength_is_the_factor_times_the_first_steps_mean_block_gradient_norm(tiny_gpt2_dir, chat_examples,
                                                                               tmp_path):
    search, batches, _ = float64_search(tiny_gpt2_dir, chat_examples[:64], tmp_path, inner_steps=0,
                                        search_group_sparsity=FACTOR)
    search.model.eval()  # no dropout: the same batch gives the same gradient twice
    batch = next(batches)
    search.loss(batch).backward()
    groups = search.group_sparsity.groups
    norms = [torch.sqrt(sum(w.grad.square().sum() for w in group)) for group in groups]
    search.inner_optimizer.zero_grad(set_to_none=True)
    assert len(groups) == len(search.gates.blocks) and all(len(g) == 2 for g in groups)  # c_attn, c_fc per block
    assert search.group_sparsity.strength is None
    search._inner_step([batch])
    assert search.group_sparsity.strength == pytest.approx(FACTOR * float(torch.stack(norms).mean()), rel=1e-9)
    assert search.group_sparsity.strength > 0
    search.gates.remove()


def test_penalty_gradient_is_that_of_strength_times_each_blocks_norm(tiny_gpt2_dir, chat_examples, tmp_path):
    """After two inner steps (B != 0): the gradient added is autograd's of strength * sum_l ||B_l||, and a block
    whose B is exactly zero gets none (the subgradient 0)."""
    search, _, _ = float64_search(tiny_gpt2_dir, chat_examples[:64], tmp_path, inner_steps=2, learning_rate=1e-2,
                                  search_group_sparsity=FACTOR)
    sparsity = search.group_sparsity
    with torch.no_grad():
        for weight in sparsity.groups[-1]:
            weight.zero_()
    weights = [w for group in sparsity.groups for w in group]
    assert all(float(torch.sqrt(sum(w.square().sum() for w in g))) > 0 for g in sparsity.groups[:-1])
    penalty = sparsity.strength * sum(torch.sqrt(sum(w.square().sum() for w in g)) for g in sparsity.groups[:-1])
    expected = torch.autograd.grad(penalty, weights, allow_unused=True, materialize_grads=True)
    for weight in weights:
        weight.grad = torch.zeros_like(weight)
    sparsity.add_gradient()
    for weight, gradient in zip(weights, expected):
        torch.testing.assert_close(weight.grad, gradient, rtol=1e-12, atol=1e-15)
    assert all(bool((w.grad == 0).all()) for w in sparsity.groups[-1])
    assert sparsity.norms()[-1] == 0.0 and min(sparsity.norms()[:-1]) > 0
    search.gates.remove()


def test_the_record_gives_the_strength_and_each_blocks_norm(tiny_llama_dir, chat_examples, tmp_path):
    """Through the trainer's own `train()`: the saved record (read back from its file) carries the measured strength
    and every candidate block's final LoRA B norm."""
    from flexora_trl.record import SelectionRecord
    from tiny import flexora_trainer

    trainer = flexora_trainer(tiny_llama_dir, tmp_path, chat_examples, selection_score="ablation",
                              search_group_sparsity=FACTOR, selection_rule="top_k", selection_top_k=2)
    trainer.train()
    record = SelectionRecord.read(str(tmp_path))
    assert record.group_sparsity_strength > 0
    assert sorted(record.lora_norms) == record.candidate_layers
    assert all(norm > 0 for norm in record.lora_norms.values())  # every B left zero on its first step
    assert record.options["search_group_sparsity"] == FACTOR
