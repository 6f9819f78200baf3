"""How the outer step gets alpha's gradient from the validation loss.

Every strategy is a callable `(search, val_batches, train_batches) -> None` that leaves alpha's gradient in
`search.gates.alpha.grad` and never touches the LoRA weights, their `.grad` or the inner optimizer's state.
`train_batches` are the micro-batches of the inner steps that come next, for strategies that look ahead.
"""

from __future__ import annotations

import torch


def first_order(search, val_batches, train_batches) -> torch.Tensor:
    """DARTS first order (the authors' code): d L_val(theta_t, alpha) / d alpha at the current LoRA weights.

    The LoRA weights are frozen for the duration, so the backward pass reaches alpha and nothing else.
    Returns the summed validation loss (detached).
    """
    total = torch.zeros((), device=search.gates.alpha.device)
    with search.lora_frozen(), search.gates.differentiable():
        for batch in val_batches:
            loss = search.loss(batch)
            loss.backward()
            total += loss.detach().float()
    return total


STRATEGIES = {"first_order": first_order}


def get_strategy(name: str):
    if name not in STRATEGIES:
        raise NotImplementedError(f"hypergradient={name!r} is not available; choose one of {sorted(STRATEGIES)}.")
    return STRATEGIES[name]
