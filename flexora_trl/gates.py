"""Per-block gates on the LoRA branches: `g = L * softmax(alpha)`, applied linearly to every LoRA module of a block.

The gate multiplies the output of each `lora_B`, so a LoRA module computes `base(x) + g_l * scaling * B(A(drop(x)))`,
the paper's equation (the authors' hooks scale three inputs and end up with `g**3`; the ranking is the same).
`alpha` is a stand-alone fp32 tensor, never registered on the model, so neither the Trainer's optimizer nor
`save_model` ever see it. Inner steps read the gates detached; outer steps read them with alpha's graph.
"""

from __future__ import annotations

import contextlib
from functools import partial

import torch

from .blocks import BlockMap


def gate_values(alpha: torch.Tensor) -> torch.Tensor:
    """`L * softmax(alpha)`, written as `exp(alpha - logmeanexp(alpha))` so that alpha = 0 gives gates of exactly 1."""
    count = torch.tensor(float(alpha.numel()), dtype=alpha.dtype, device=alpha.device)
    return torch.exp(alpha - (alpha.logsumexp(0) - count.log()))


class BlockGates:
    """One gate logit per candidate block; forward hooks on the LoRA `B` projections apply the gates until `remove()`
    (or the end of a `with` block).

    Besides the gate, each block's LoRA output is multiplied by `mask[l]` (1 unless a score or
    `search_block_dropout` changes it): a block's LoRA is switched off with `mask[l] = 0` (the switch scores:
    `ablation`, `insertion`, `banzhaf`), and the gradient of the validation loss with respect to `mask` at 1 is the
    first-order estimate of that switch (the `taylor` score). Multiplying by 1 keeps the outputs exactly those of
    plain LoRA.
    """

    def __init__(self, block_map: BlockMap, device=None, dtype=torch.float32):
        self.blocks = block_map.blocks
        self.alpha = torch.zeros(len(self.blocks), dtype=dtype, device=device, requires_grad=True)
        self.mask = torch.ones(len(self.blocks), dtype=dtype, device=device)
        self.live = False
        self._handles = []
        for position, block in enumerate(self.blocks):
            for name, layer in block_map.modules[block]:
                for adapter in layer.active_adapters:
                    if adapter not in layer.lora_B:
                        raise ValueError(f"Flexora gates LoRA linear/conv layers; {name} has no `lora_B` module.")
                    if adapter in getattr(layer, "lora_variant", {}):
                        raise ValueError(
                            f"{name} uses a LoRA variant ({type(layer.lora_variant[adapter]).__name__}, e.g. DoRA); "
                            "Flexora's gate is only linear on plain LoRA. Set use_dora=False."
                        )
                    hook = partial(self._scale_output, position)
                    self._handles.append(layer.lora_B[adapter].register_forward_hook(hook))

    def values(self) -> torch.Tensor:
        return gate_values(self.alpha)

    def _scale_output(self, position, module, inputs, output):
        gates = self.values() if self.live else self.values().detach()
        return output * (gates[position] * self.mask[position]).to(output.dtype)

    @contextlib.contextmanager
    def mask_gradient(self):
        """Within this block the backward pass also leaves d loss / d mask in `mask.grad` (the `taylor` score)."""
        self.mask.requires_grad_(True)
        try:
            yield
        finally:
            self.mask.requires_grad_(False)
            self.mask.grad = None

    @contextlib.contextmanager
    def switched_off(self, position):
        """The LoRA of the block at `position` (an index, or a boolean tensor over the blocks) contributes nothing
        within this block (the switch scores: `ablation`, `insertion`, `banzhaf`; `search_block_dropout`)."""
        if isinstance(position, torch.Tensor):
            position = position.to(self.mask.device)
        with torch.no_grad():
            self.mask[position] = 0.0
        try:
            yield
        finally:
            with torch.no_grad():
                self.mask[position] = 1.0

    @contextlib.contextmanager
    def differentiable(self):
        """Within this block the gates carry alpha's graph (outer steps); outside they are constants."""
        self.live = True
        try:
            yield
        finally:
            self.live = False

    def __enter__(self) -> BlockGates:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def remove(self) -> None:
        """Take every hook off the model: the fine-tune and the saved adapter are plain LoRA."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def as_dict(self) -> dict[int, float]:
        return dict(zip(self.blocks, self.alpha.detach().cpu().tolist()))
