"""How the outer step gets alpha's gradient from the validation loss.

Every strategy is an object named after its `hypergradient` choice. Called as `(search, val_batches, lookahead)`, it
returns the summed validation loss and leaves alpha's gradient in `search.gates.alpha.grad`, never touching the LoRA
weights, their `.grad` or the inner optimizer's state; `lookahead` holds the micro-batches of the inner steps that come
next (one list per optimizer step), for the strategies that differentiate through them. `context(model)` is what the
model needs for the whole search.
"""

from __future__ import annotations

import contextlib

import torch


class FirstOrder:
    """DARTS first order (the authors' code): d L_val(theta_t, alpha) / d alpha at the current LoRA weights.

    The LoRA weights are frozen for the duration, so the backward pass reaches alpha and nothing else.
    Returns the summed validation loss (detached).
    """

    name = "first_order"

    def context(self, model):
        """What the model needs for the whole search: nothing."""
        return contextlib.nullcontext()

    def __call__(self, search, val_batches, lookahead) -> torch.Tensor:
        total = torch.zeros((), device=search.gates.alpha.device)
        with search.lora_frozen(), search.gates.differentiable():
            for batch in val_batches:
                loss = search.loss(batch)
                loss.backward()
                search.score.collect(search.gates)  # per-batch d loss / d mask, for the `taylor` score
                total += loss.detach().float()
        return total


class Unrolled:
    """d L_val(theta_K(alpha), alpha) / d alpha through K differentiable inner steps (the paper's unrolling).

    theta_K is built from the current LoRA weights by K Adam(W)-style updates that read the real inner optimizer's
    moments and step count as constants, on the micro-batches the inner loop will use next; the real weights,
    their gradients and the optimizer state are never written. Memory grows with K copies of the LoRA weights and
    K micro-batch graphs (with their second-order terms); the base weights are shared, never copied.
    """

    name = "unrolled"

    def context(self, model):
        """Fused attention kernels have no double backward: the whole search runs on eager attention."""
        return eager_attention(model)

    def __call__(self, search, val_batches, lookahead) -> torch.Tensor:
        # The backward runs inside `differentiable()` too: gradient checkpointing recomputes the forward during it.
        with search.gates.differentiable():
            val_loss = unrolled_validation_loss(search, val_batches, lookahead, create_graph=True)
            mask = search.gates.mask
            inputs = [search.gates.alpha] + ([mask] if mask.requires_grad else [])
            grads = torch.autograd.grad(val_loss, inputs)
            search.gates.alpha.grad = grads[0]
            if mask.requires_grad:
                mask.grad = grads[1]
                search.score.collect(search.gates)
        return val_loss.detach().float()


def unrolled_validation_loss(search, val_batches, lookahead, create_graph: bool) -> torch.Tensor:
    """L_val(theta_K(alpha), alpha) summed over `val_batches`; differentiable in alpha when `create_graph` and
    called within `search.gates.differentiable()`."""
    optimizer = search.inner_optimizer
    weights = [param.detach().requires_grad_(True) for param in search.lora_params]
    states = [optimizer.state.get(param, {}) for param in search.lora_params]
    moments = [(s.get("exp_avg", torch.zeros_like(w)), s.get("exp_avg_sq", torch.zeros_like(w)))
               for s, w in zip(states, weights)]
    counts = [float(s.get("step", 0)) for s in states]
    for offset, batches in enumerate(lookahead, start=1):
        loss = sum(search.loss(batch, weights) for batch in batches) / len(batches)
        grads = torch.autograd.grad(loss, weights, create_graph=create_graph)
        weights, moments = _adamw_step(optimizer.param_groups[0], weights, grads, moments,
                                       [count + offset for count in counts])
    return sum(search.loss(batch, weights) for batch in val_batches)


def _adamw_step(group, weights, grads, moments, counts):
    """One AdamW update as torch.optim.AdamW makes it, written with tensors so it can be differentiated.

    The square root takes eps**2 inside (sqrt(v_hat + eps**2) instead of sqrt(v_hat) + eps) so that its derivative
    stays finite where a gradient is exactly zero (LoRA A while B is still zero); the step is otherwise the same.
    """
    lr, (beta1, beta2), eps, decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
    new_weights, new_moments = [], []
    for weight, grad, (first, second), count in zip(weights, grads, moments, counts):
        first = beta1 * first + (1 - beta1) * grad
        second = beta2 * second + (1 - beta2) * grad * grad
        step = (first / (1 - beta1**count)) / torch.sqrt(second / (1 - beta2**count) + eps**2)
        new_weights.append(weight * (1 - lr * decay) - lr * step)
        new_moments.append((first, second))
    return new_weights, new_moments


@contextlib.contextmanager
def eager_attention(model):
    """Fused attention kernels (SDPA, flash) have no double backward; the unrolled search runs on eager attention."""
    base = model.get_base_model()
    previous = base.config._attn_implementation
    if previous != "eager":
        base.set_attn_implementation("eager")
    try:
        yield
    finally:
        if previous != "eager":
            base.set_attn_implementation(previous)


STRATEGIES = {strategy.name: strategy for strategy in (FirstOrder, Unrolled)}


def get_strategy(name: str):
    if name not in STRATEGIES:
        raise NotImplementedError(f"hypergradient={name!r} is not available; choose one of {sorted(STRATEGIES)}.")
    return STRATEGIES[name]()
