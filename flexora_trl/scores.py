"""What ranks the blocks after the search (the `selection_score` option): `gate`, `taylor`, `ablation` or
`final_taylor`.

Every score gives each block a mean and a standard error over validation batches, so the selection can tell whether
its kept and dropped blocks are apart beyond the noise. Why more than the gate: a gate's size is not the block's
importance (Wang et al., ICLR 2021, "Rethinking architecture selection in differentiable NAS": the drop in validation
quality when a candidate is removed ranks candidates better than its architecture weight); the first-order Taylor term
of that removal is its cheap estimate (Molchanov et al., CVPR 2019), gathered for free on the outer steps' backward
passes (`taylor`) or taken once at the final LoRA (`final_taylor`). None of these is centred by a softmax, so
`positive` keeps the blocks that help, not half of them by construction.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
from dataclasses import dataclass

import torch
from accelerate.utils import reduce


@dataclass
class BlockScores:
    scores: dict[int, float]
    stderr: dict[int, float]


def summarise(blocks: list[int], samples: list[torch.Tensor], trainer=None) -> BlockScores:
    """Mean and standard error over per-batch score vectors (averaged across ranks when distributed)."""
    stacked = torch.stack([s.detach().double() for s in samples])
    mean = stacked.mean(0)
    stderr = stacked.std(0) / math.sqrt(len(samples)) if len(samples) > 1 else torch.zeros_like(mean)
    if trainer is not None and trainer.accelerator.num_processes > 1:
        mean, stderr = reduce(mean, reduction="mean"), reduce(stderr, reduction="mean")
    return BlockScores(dict(zip(blocks, mean.tolist())), dict(zip(blocks, stderr.tolist())))


class GateScore:
    """alpha after the search (the paper). Its spread: how much alpha still moved over the last quarter of the
    outer steps, each on other validation batches."""

    name = "gate"

    def outer_context(self, gates):
        return contextlib.nullcontext()

    def collect(self, gates) -> None:
        pass

    def current(self, search) -> dict[int, float] | None:
        """The score so far, for stopping a search whose selection has settled."""
        return search.gates.as_dict()

    def result(self, search, trajectory, val_loader) -> BlockScores:
        alpha = search.gates.as_dict()
        tail = trajectory[-max(2, len(trajectory) // 4) :]
        if len(tail) < 2:
            return BlockScores(alpha, {block: 0.0 for block in alpha})
        spread = torch.tensor(tail, dtype=torch.float64).std(0).tolist()
        return BlockScores(alpha, dict(zip(search.gates.blocks, spread)))


class TaylorScore(GateScore):
    """-d L_val / d mask_l at mask = 1 on every outer step's validation batches: the first-order estimate of how much
    the validation loss rises when block l's LoRA (as trained so far) is switched off."""

    name = "taylor"

    def __init__(self):
        self.samples: list[torch.Tensor] = []

    def outer_context(self, gates):
        return gates.mask_gradient()

    def collect(self, gates) -> None:
        if gates.mask.grad is not None:
            self.samples.append(-gates.mask.grad.detach().clone())
            gates.mask.grad = None

    def current(self, search) -> dict[int, float] | None:
        if not self.samples:
            return None
        return summarise(search.gates.blocks, self.samples, search.trainer).scores

    def result(self, search, trajectory, val_loader) -> BlockScores:
        if not self.samples:
            raise RuntimeError("the taylor score saw no outer step: raise the search budget or lower the warm-up")
        return summarise(search.gates.blocks, self.samples, search.trainer)


class AfterSearchScore(GateScore):
    """A score measured once the search is over, at its final LoRA, on the validation loader's first
    `score_val_batches` batches (all of them if it has fewer: with dropout off a batch seen again gives the same
    losses, so repeating one would only add cost and shrink the standard error), with dropout off. Outside the
    mixed-precision autocast: a block's effect on the loss can be 1e-4, below bf16's resolution at a loss of 1
    (measured on SmolLM2 under bf16 autocast: every score a multiple of 6e-5)."""

    def current(self, search) -> dict[int, float] | None:
        return None

    def result(self, search, trajectory, val_loader) -> BlockScores:
        batches = list(itertools.islice(val_loader, search.options.score_val_batches))
        was_training = search.model.training
        search.model.eval()
        try:
            return summarise(search.gates.blocks, self.per_batch(search, batches), search.trainer)
        finally:
            search.model.train(was_training)

    def per_batch(self, search, batches) -> list[torch.Tensor]:
        raise NotImplementedError


class AblationScore(AfterSearchScore):
    """The validation loss with one block's LoRA switched off minus with all on, on the same batches for every block
    (forward passes only). Switching off block l cannot change what the blocks below l compute, so those replay their
    outputs from the batch's full pass (`Replay`): a block's pass costs the blocks from l up and the head."""

    name = "ablation"

    @torch.no_grad()
    def per_batch(self, search, batches) -> list[torch.Tensor]:
        replay = Replay(search.model.get_submodule(search.trainer.flexora_blocks.stack))
        rises = torch.zeros(len(batches), len(search.gates.blocks), dtype=torch.float64)
        for row, batch in enumerate(batches):
            with replay.recording():
                base = float(search.loss(batch, autocast=False))
            for position, block in enumerate(search.gates.blocks):
                with search.gates.switched_off(position), replay.below(block):
                    rises[row, position] = float(search.loss(batch, autocast=False)) - base
        return list(rises)


class FinalTaylorScore(AfterSearchScore):
    """-d L_val / d mask_l at mask = 1 at the final LoRA: the taylor term measured once instead of averaged over the
    search, i.e. the first-order estimate of the ablation's loss rise, for one forward and backward pass per batch
    instead of one forward pass per block."""

    name = "final_taylor"

    def per_batch(self, search, batches) -> list[torch.Tensor]:
        samples = []
        with search.gates.mask_gradient(), search.lora_frozen():
            for batch in batches:
                (gradient,) = torch.autograd.grad(search.loss(batch, autocast=False), search.gates.mask)
                samples.append(-gradient.detach().double())
        return samples


class Replay:
    """Blocks of a stack that return what they returned in a recorded forward pass instead of running again."""

    def __init__(self, stack: torch.nn.ModuleList):
        self.stack = stack
        self.outputs: dict[int, object] = {}

    @contextlib.contextmanager
    def recording(self):
        """Within this block every block's output is kept (those of the last pass)."""
        self.outputs = {}
        handles = [block.register_forward_hook(functools.partial(self._record, index))
                   for index, block in enumerate(self.stack)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _record(self, index, module, args, output):
        self.outputs[index] = output

    @contextlib.contextmanager
    def below(self, lowest: int):
        """Within this block the blocks under `lowest` return their recorded outputs (an instance `forward`; one a
        wrapper such as accelerate's hooks had set is put back after)."""
        saved = {}
        for index in range(lowest):
            block = self.stack[index]
            saved[index] = block.__dict__.get("forward")
            block.forward = functools.partial(_recorded, self.outputs[index])
        try:
            yield
        finally:
            for index, forward in saved.items():
                if forward is None:
                    del self.stack[index].forward
                else:
                    self.stack[index].forward = forward


def _recorded(output, *args, **kwargs):
    return output


SCORES = {score.name: score for score in (GateScore, TaylorScore, AblationScore, FinalTaylorScore)}


def get_score(name: str):
    if name not in SCORES:
        raise NotImplementedError(f"selection_score={name!r} is not available; choose one of {sorted(SCORES)}.")
    return SCORES[name]()
