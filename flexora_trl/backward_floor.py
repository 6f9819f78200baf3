"""Stop the backward pass at the lowest block that still carries LoRA.

With gradient checkpointing (and QLoRA's `prepare_model_for_kbit_training`), transformers and TRL call
`enable_input_require_grads()`, which makes the embeddings' output require grad so that checkpointed blocks see a
grad-requiring input. After the selection that sends the backward pass through every block below the lowest
selected one (recomputing them under checkpointing), although nothing there is trainable. Handing the lowest
selected block a detached copy of its hidden states, still requiring grad, keeps what the trick needs (a
grad-requiring input, so reentrant checkpointing works) and cuts the useless part of the graph.

The cut has to happen outside the block's own `__call__`, because transformers' `GradientCheckpointingLayer`
checkpoints that whole call; so the block gets a subclass whose `__call__` detaches first. Its parameters, names
and state dict are unchanged, and `remove()` restores the original class.
"""

from __future__ import annotations

import logging

import torch

from .blocks import BlockMap

logger = logging.getLogger(__name__)

_FLOOR_CLASSES: dict[type, type] = {}


def _detached(hidden_states):
    if torch.is_tensor(hidden_states) and hidden_states.requires_grad and torch.is_grad_enabled():
        return hidden_states.detach().requires_grad_(True)
    return hidden_states


def _floor_class(block_class: type) -> type:
    if block_class not in _FLOOR_CLASSES:

        def __call__(self, *args, **kwargs):
            if args:
                args = (_detached(args[0]), *args[1:])
            elif "hidden_states" in kwargs:
                kwargs["hidden_states"] = _detached(kwargs["hidden_states"])
            return block_class.__call__(self, *args, **kwargs)

        _FLOOR_CLASSES[block_class] = type(block_class.__name__, (block_class,), {
            "__call__": __call__, "__module__": block_class.__module__, "__qualname__": block_class.__qualname__,
        })
    return _FLOOR_CLASSES[block_class]


class BackwardFloor:
    """Installed on the lowest selected block for the fine-tune; `remove()` (or the end of a `with` block) undoes it."""

    def __init__(self, model, block_map: BlockMap, selected: list[int]):
        self.block = None
        lowest = min(selected)
        below = _trainable_outside(model, block_map, lowest)
        if lowest == 0 or below:
            if below:
                logger.info("Flexora: parameters outside the selected blocks are trainable (%s); the backward pass "
                            "runs through every block.", below[:3])
            return
        self.block = model.get_submodule(block_map.stack)[lowest]
        self.original_class = type(self.block)
        self.block.__class__ = _floor_class(self.original_class)

    def __enter__(self) -> BackwardFloor:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def remove(self) -> None:
        if self.block is not None:
            self.block.__class__ = self.original_class
            self.block = None


def _trainable_outside(model, block_map: BlockMap, lowest: int) -> list[str]:
    """Names of trainable parameters that are not inside a block at or above `lowest`."""
    names = []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        block = block_map.block_of(name)
        if block is None or block < lowest:
            names.append(name)
    return names
