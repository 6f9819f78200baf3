"""`search_group_sparsity`: a group-lasso penalty on each block's LoRA during the search, so that the blocks compete
for one change instead of sharing it.

Why: with LoRA on every linear module, one block's LoRA can make up, through the residual stream, for a change
another block needs, so a search that trains every block at once can spread the change and no score can tell the
blocks apart. (The planted benchmark's first evidence for it, an unplanted block's LoRA taking more than any planted
block's exact repair, was the noise of 64 held-out rows; on 768 it did not hold.) The group lasso (Yuan & Lin, 2006)
adds `strength * ||B_l||` per block (the Frobenius norm of all the block's LoRA `B` matrices together) to the search's
training loss: under gradient descent a block's B stays at zero while the norm of its loss gradient is below
`strength`, so the blocks that lower the loss most per unit of weight take the change and the others stay at zero.

The strength is scale-free: `search_group_sparsity` times the blocks' mean gradient norm on the first inner step,
where every B is zero and that gradient is what decides whether a block leaves zero at all. A loss penalty, not a
proximal shrink after each optimizer step: under Adam a fixed shrink per step would select by how consistent a
gradient's sign is, not by its size against the strength (tried on the tests' tiny planted model: no better).
Measured (benchmarks/README.md, "The blocks made to compete"): under the search's AdamW no block's B was left at zero
(each element keeps moving by about the learning rate), and the planted blocks were found no better than without it.
Under `search_optimizer: normalized_sgd` (steps in proportion to the gradient) most blocks were left near zero, but the
blocks that won were mostly unplanted ones that make up for several damaged blocks at once (the first blocks, the
last): worse than without the penalty.
"""

from __future__ import annotations

import torch
from torch.nn.utils import get_total_norm

from .blocks import BlockMap


class GroupSparsity:
    """Adds the penalty's gradient to the LoRA `B` weights' gradients (after the loss's backward pass)."""

    def __init__(self, block_map: BlockMap, blocks: list[int], factor: float):
        self.factor = factor
        self.strength: float | None = None  # set on the first inner step
        self.groups = [
            [layer.lora_B[adapter].weight for _, layer in block_map.modules[block] for adapter in layer.active_adapters]
            for block in blocks
        ]

    def norms(self) -> list[float]:
        """Each block's ||B_l||."""
        return [float(get_total_norm(group)) for group in self.groups]

    @torch.no_grad()
    def add_gradient(self) -> None:
        """d(strength * ||B_l||)/dB_l = strength * B_l / ||B_l|| added to each block's B gradients (nothing at
        B_l = 0, the subgradient that lets the loss gradient alone decide whether the block leaves zero). On the
        tensors' own device: no host round trip on the inner step's path after the first step."""
        if self.strength is None:
            gradients = [float(get_total_norm([w.grad for w in group if w.grad is not None])) for group in self.groups]
            self.strength = self.factor * sum(gradients) / len(gradients)
        for group in self.groups:
            norm = get_total_norm(group)
            scale = self.strength / norm.clamp_min(torch.finfo(norm.dtype).tiny)  # B_l = 0: 0 * scale adds nothing
            for weight in group:
                if weight.grad is not None:
                    weight.grad.add_(weight * scale)
