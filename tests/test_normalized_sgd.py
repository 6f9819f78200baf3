"""`search_optimizer='normalized_sgd'`: steps proportional to the gradient, on a real trainer's search (tiny GPT-2,
float64)."""

import copy
import itertools

import pytest
import torch

from tiny import float64_search

from flexora_trl.normalized_sgd import NormalizedSGD
from flexora_trl.search_data import search_dataloaders

LEARNING_RATE = 1e-3


def test_first_step_is_the_gradient_over_its_root_mean_square(tiny_gpt2_dir, chat_examples, tmp_path):
    """Step one (Adam's bias correction makes its moments the gradient itself): every LoRA weight moves by
    lr * g / RMS(all LoRA gradients), so a weight with twice the gradient moves twice as far (AdamW: lr * sign(g))."""
    search, batches, _ = float64_search(tiny_gpt2_dir, chat_examples[:64], tmp_path, inner_steps=0,
                                        learning_rate=LEARNING_RATE, search_optimizer="normalized_sgd")
    search.model.eval()  # no dropout: the same batch gives the same gradient twice
    batch = next(batches)
    search.loss(batch).backward()
    gradients = [p.grad.clone() for p in search.lora_params]
    before = [p.detach().clone() for p in search.lora_params]
    search.inner_optimizer.zero_grad(set_to_none=True)
    search.trainer.args.max_grad_norm = 0  # the clip would rescale the gradient, not the step
    search._inner_step([batch])
    rms = torch.sqrt(sum(g.square().sum() for g in gradients) / sum(g.numel() for g in gradients))
    assert rms > 0
    for weight, start, gradient in zip(search.lora_params, before, gradients):
        torch.testing.assert_close(weight.detach() - start, -LEARNING_RATE * gradient / (rms + 1e-8),
                                   rtol=1e-9, atol=1e-15)
    search.gates.remove()


def _weak_block_share(model_dir, examples, output_dir, optimizer):
    """24 inner steps with a group-sparsity penalty at half the blocks' mean gradient norm, the first block's LoRA A
    scaled by 0.1 (so its B's gradient is ten times weaker than the others'): its final B norm over the largest."""
    search, _, _ = float64_search(model_dir, examples, output_dir, inner_steps=0, learning_rate=LEARNING_RATE,
                                  search_optimizer=optimizer, search_group_sparsity=0.5)
    with torch.no_grad():
        for _, layer in search.trainer.flexora_blocks.modules[search.gates.blocks[0]]:
            for adapter in layer.active_adapters:
                layer.lora_A[adapter].weight.mul_(0.1)
    train_loader, _, _ = search_dataloaders(search.trainer)
    for batch in itertools.islice(itertools.cycle(list(train_loader)), 24):
        search._inner_step([batch])
    norms = search.group_sparsity.norms()
    search.gates.remove()
    return norms[0] / max(norms)


def test_group_sparsity_holds_a_weak_block_at_zero_under_normalized_sgd(tiny_gpt2_dir, chat_examples, tmp_path):
    """A block whose gradient stays below the penalty's strength sits at zero under `normalized_sgd` (as under
    gradient descent); under AdamW each of its weights keeps moving by about the learning rate around zero, so the
    weak block keeps at least ten times more of the largest block's norm."""
    normalized = _weak_block_share(tiny_gpt2_dir, chat_examples, tmp_path / "normalized", "normalized_sgd")
    adamw = _weak_block_share(tiny_gpt2_dir, chat_examples, tmp_path / "adamw", "adamw")
    assert 0 < normalized < 0.01 and adamw > 10 * normalized, (normalized, adamw)


def test_state_dict_carries_the_shared_second_moment():
    """A copy loaded from `state_dict()` takes the same next step as the optimizer it was saved from (the shared
    running mean square and step count included); a fresh optimizer, without them, steps differently."""
    torch.manual_seed(0)
    weights = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(5))]
    gradients = [[torch.randn_like(w) for w in weights] for _ in range(4)]

    def step(optimizer, params, grads):
        for p, g in zip(params, grads):
            p.grad = g.clone()
        optimizer.step()

    saved = NormalizedSGD(weights, lr=LEARNING_RATE)
    for grads in gradients[:3]:
        step(saved, weights, grads)
    copies = [[torch.nn.Parameter(w.detach().clone()) for w in weights] for _ in range(2)]
    loaded, fresh = NormalizedSGD(copies[0], lr=LEARNING_RATE), NormalizedSGD(copies[1], lr=LEARNING_RATE)
    loaded.load_state_dict(copy.deepcopy(saved.state_dict()))  # as from a file: no tensor shared with `saved`
    for optimizer, params in ((saved, weights), (loaded, copies[0]), (fresh, copies[1])):
        step(optimizer, params, gradients[3])
    for original, reloaded, other in zip(weights, copies[0], copies[1]):
        torch.testing.assert_close(reloaded, original, rtol=0, atol=0)
        assert not torch.allclose(other, original)
