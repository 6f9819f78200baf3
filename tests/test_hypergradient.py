"""The hypergradients against central finite differences, on a tiny GPT-2 in float64.

GPT-2 rather than Llama because Llama's eager attention takes its softmax in float32, which caps the precision of
any finite difference through it; the code under test is the same for both.
"""

import pytest
import torch
from transformers import AutoModelForCausalLM

from flexora_trl.hypergradient import FirstOrder, Unrolled, eager_attention, unrolled_validation_loss
from tiny import float64_search, flexora_trainer, lora_config

ALPHA = [0.1, -0.2, 0.05, 0.12]


@pytest.fixture()
def search_setup(tiny_gpt2_dir, chat_examples, tmp_path):
    """A real trainer's search, two inner steps in (B != 0, Adam moments set), alpha away from zero."""
    search, batches, val_loader = float64_search(tiny_gpt2_dir, chat_examples[:64], tmp_path, hypergradient="unrolled")
    with torch.no_grad():
        search.gates.alpha.copy_(torch.tensor(ALPHA, dtype=torch.float64))
    yield search, batches, [next(iter(val_loader))]
    search.gates.remove()


def central_differences(search, val, lookahead, step=1e-5):
    alpha = search.gates.alpha
    estimate = torch.zeros_like(alpha)
    for i in range(alpha.numel()):
        values = []
        for sign in (1, -1):
            with torch.no_grad():
                alpha[i] += sign * step
            with search.gates.differentiable():
                values.append(unrolled_validation_loss(search, val, lookahead, create_graph=False).detach())
            with torch.no_grad():
                alpha[i] -= sign * step
        estimate[i] = (values[0] - values[1]) / (2 * step)
    return estimate


def relative_error(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("unroll_steps", [1, 3])
def test_unrolled_matches_finite_differences(search_setup, unroll_steps):
    search, batches, val = search_setup
    lookahead = [[next(batches)] for _ in range(unroll_steps)]
    weights = [p.detach().clone() for p in search.lora_params]
    moments = {id(p): {k: v.clone() for k, v in s.items()} for p, s in search.inner_optimizer.state.items()}

    Unrolled()(search, val, lookahead)
    analytic = search.gates.alpha.grad.clone()
    assert analytic.abs().sum() > 0
    assert relative_error(analytic, central_differences(search, val, lookahead)) < 1e-4

    # The unrolled copy never leaks into the real weights, their gradients or the inner optimizer's state.
    assert all(torch.equal(w, p) for w, p in zip(weights, search.lora_params))
    assert all(p.grad is None for p in search.lora_params)
    for param, state in search.inner_optimizer.state.items():
        assert all(torch.equal(state[k], v) for k, v in moments[id(param)].items())


def test_first_order_matches_finite_differences_at_fixed_weights(search_setup):
    search, _, val = search_setup
    FirstOrder()(search, val, [])
    analytic = search.gates.alpha.grad.clone()
    assert relative_error(analytic, central_differences(search, val, [])) < 1e-4


def test_unrolled_differs_from_first_order(search_setup):
    search, batches, val = search_setup
    FirstOrder()(search, val, [])
    first = search.gates.alpha.grad.clone()
    search.gates.alpha.grad = None
    Unrolled()(search, val, [[next(batches)]])
    assert relative_error(search.gates.alpha.grad, first) > 1e-3


def test_unrolled_search_end_to_end_with_accumulation(tiny_llama_dir, chat_examples, tmp_path):
    # Reentrant checkpointing (Axolotl's default) has no second-order graph: the search runs non-reentrant.
    trainer = flexora_trainer(tiny_llama_dir, tmp_path, chat_examples, hypergradient="unrolled", unroll_steps=2,
                              gradient_accumulation_steps=2, per_device_train_batch_size=4, max_steps=2,
                              gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": True})
    assert trainer.model.get_base_model().config._attn_implementation != "eager"
    trainer.train()
    record = trainer.flexora_record
    assert record.search_outer_steps == record.search_inner_steps == 6  # ceil(48 / (4 * 2))
    assert any(value != 0 for value in record.alpha.values())
    # Eager attention was only for the search (fused kernels have no double backward).
    assert trainer.model.get_base_model().config._attn_implementation != "eager"


def test_eager_attention_is_restored(tiny_llama_dir):
    from peft import get_peft_model

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama_dir, attn_implementation="sdpa"),
                           lora_config())
    with eager_attention(model):
        assert model.get_base_model().config._attn_implementation == "eager"
    assert model.get_base_model().config._attn_implementation == "sdpa"
