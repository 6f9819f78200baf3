"""`search_optimizer='normalized_sgd'`: the search's LoRA steps sized by each weight's gradient, not by its sign.

Why: AdamW divides every weight's step by that weight's own running gradient size, so every block's LoRA moves by
about the learning rate whatever its gradient's size: a block that can make up for only part of a neighbour's change
learns as fast as the block that holds it, the two share the change, and a score taken after the search cannot tell
them apart (measured on the planted benchmark: benchmarks/README.md). This is AdamW with one second moment for all
the LoRA weights together (the running mean square of the whole gradient): the learning rate keeps its AdamW meaning
for the gradient as a whole, while a block whose gradient is twice as large moves twice as far. Under it a
`search_group_sparsity` penalty acts as under gradient descent, where a block whose gradient norm stays below the
penalty's strength stays at zero.
"""

from __future__ import annotations

import torch
from torch.nn.utils import get_total_norm


class NormalizedSGD(torch.optim.Optimizer):
    """Momentum SGD on the gradient divided by one running RMS of all the parameters' gradients (bias-corrected as
    Adam's moments), with AdamW's decoupled weight decay."""

    def __init__(self, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            return None
        beta1, beta2 = self.param_groups[0]["betas"]
        squares = float(get_total_norm([p.grad for p in params])) ** 2
        # The state all weights share lives in the first weight's state, as torch's LBFGS keeps its own, so that
        # `state_dict()` saves it. mean_square: the running mean of the squared gradient over every element.
        shared = self.state[self.param_groups[0]["params"][0]]
        steps = shared["shared_step"] = shared.get("shared_step", 0) + 1
        mean_square = beta2 * shared.get("mean_square", 0.0) + (1 - beta2) * squares / sum(p.numel() for p in params)
        shared["mean_square"] = mean_square
        rms = (mean_square / (1 - beta2**steps)) ** 0.5
        for group in self.param_groups:
            scale = group["lr"] / (1 - beta1**steps) / (rms + group["eps"])
            for p in group["params"]:
                if p.grad is None:
                    continue
                momentum = self.state[p].setdefault("exp_avg", torch.zeros_like(p))
                momentum.lerp_(p.grad, 1 - beta1)
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(momentum, alpha=-scale)
        return None
