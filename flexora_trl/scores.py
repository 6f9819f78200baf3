"""What ranks the blocks after the search (the `selection_score` option): `gate`, `taylor`, `ablation`, `insertion`,
`banzhaf`, `forward` or `final_taylor`.

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

from .selection import boundary, most_kept

# `score_early_stop`: every block is measured on this many batches first (the default `score_val_batches`), then only
# while its score is within this many standard errors of the selection's boundary (the `separation` test's 2).
FIRST_LOOK_BATCHES = 8
EARLY_STOP_Z = 2.0


@dataclass
class BlockScores:
    scores: dict[int, float]
    stderr: dict[int, float]
    batches: dict[int, int] | None = None  # validation batches each block was measured on (the after-search scores)


def summarise(blocks: list[int], samples: list[torch.Tensor], trainer=None, weights: list[float] | None = None
              ) -> BlockScores:
    """Mean and standard error over per-batch score vectors (averaged across ranks when distributed). A NaN entry is
    a block not measured on that batch (`score_early_stop`): each block's figures are over its own batches.

    `weights` (one per batch, e.g. its answer tokens) make the mean a weighted one: per-batch mean losses weighted by
    their token counts give the per-token mean over all the batches, which answers of very different lengths (one
    token to fifty) make far steadier than the mean of batch means (a batch of short answers counts as much as one
    of long ones). The standard error is then the weighted mean's (a ratio estimator's)."""
    stacked = torch.stack([s.detach().double() for s in samples])
    measured = ~stacked.isnan()
    counts = measured.sum(0)
    weight = torch.ones(len(samples), dtype=torch.float64) if weights is None else torch.tensor(weights).double()
    weight = torch.where(measured, weight[:, None], torch.zeros_like(stacked))
    share = weight / weight.sum(0).clamp(min=1e-12)
    values = stacked.nan_to_num()
    mean = (share * values).sum(0)
    variance = (share.pow(2) * (values - mean).pow(2)).sum(0) * counts / (counts - 1).clamp(min=1)
    stderr = torch.where(counts > 1, variance.sqrt(), torch.zeros_like(mean))
    if trainer is not None and trainer.accelerator.num_processes > 1:
        mean, stderr = reduce(mean, reduction="mean"), reduce(stderr, reduction="mean")
    return BlockScores(dict(zip(blocks, mean.tolist())), dict(zip(blocks, stderr.tolist())),
                       dict(zip(blocks, counts.tolist())))


def answer_tokens(batch) -> int:
    """The tokens a batch's loss is the mean over (labels not -100, after the one-token shift); 1 without labels."""
    labels = batch.get("labels")
    return 1 if labels is None else max(1, int((labels[..., 1:] != -100).sum()))


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
    (measured on SmolLM2 under bf16 autocast: every score a multiple of 6e-5). Per answer token over the batches
    (`summarise`'s weights): on SmolLM2's sampled rows (1 to 48 answer tokens) the mean of batch means had 2 to 4
    times the standard error, enough to turn a planted block's repair of 0.011 nats a token into -0.006.

    With `score_early_stop`, every block is measured on the first FIRST_LOOK_BATCHES batches, then, batch by batch,
    only the blocks whose score is within EARLY_STOP_Z standard errors of the selection's boundary (`boundary`): the
    batches go where the selection is still in doubt, as in racing for top-k identification (Maron & Moore, 1994)."""

    def current(self, search) -> dict[int, float] | None:
        return None

    def result(self, search, trajectory, val_loader) -> BlockScores:
        batches = itertools.islice(val_loader, search.options.score_val_batches)
        everyone = list(range(len(search.gates.blocks)))
        with dropout_off(search.model):
            samples, tokens = [], []
            for index, batch in enumerate(batches):
                measured = everyone
                if search.options.score_early_stop and index >= FIRST_LOOK_BATCHES:
                    measured = self.in_doubt(search, samples, tokens)
                    if not measured:
                        break
                samples.append(self.measure(search, batch, measured))
                tokens.append(answer_tokens(batch))
        return summarise(search.gates.blocks, samples, search.trainer, tokens)

    @staticmethod
    def in_doubt(search, samples, tokens) -> list[int]:
        """Positions of the blocks whose score so far is within EARLY_STOP_Z standard errors of the boundary."""
        so_far = summarise(search.gates.blocks, samples, search.trainer, tokens)
        line = boundary(so_far.scores, search.options)
        if line is None:
            return []
        return [position for position, block in enumerate(search.gates.blocks)
                if abs(so_far.scores[block] - line) <= EARLY_STOP_Z * so_far.stderr[block]]

    def measure(self, search, batch, positions: list[int]) -> torch.Tensor:
        """The score of the blocks at `positions` on one batch (NaN for the others, if it can leave them out)."""
        raise NotImplementedError


class AblationScore(AfterSearchScore):
    """The validation loss with one block's LoRA switched off minus with all on, on the same batches for every block
    (forward passes only). Switching block l cannot change what the blocks below l compute, so those replay their
    outputs from the batch's reference pass (`Replay`): a block's pass costs the blocks from l up and the head.

    Every switch score compares, on each batch, a reference pass (`reference`: which blocks' LoRAs are off) with one
    pass per block where that block alone is switched the other way; the score is the loss without the block's LoRA
    minus the loss with it, so a block that helps scores > 0."""

    name = "ablation"

    def reference(self, search, count: int) -> torch.Tensor:
        """The blocks whose LoRA is off in this batch's reference pass: none."""
        return torch.zeros(count, dtype=torch.bool)

    @torch.no_grad()
    def measure(self, search, batch, positions: list[int]) -> torch.Tensor:
        replay = Replay(search.model.get_submodule(search.trainer.flexora_blocks.stack))
        count = len(search.gates.blocks)
        off = self.reference(search, count)
        scores = torch.full((count,), math.nan, dtype=torch.float64)
        with replay.recording(), search.gates.switched_off(off):
            reference = float(search.loss(batch, autocast=False))
        for position in positions:
            switched = off.clone()
            switched[position] = not off[position]
            with search.gates.switched_off(switched), replay.below(search.gates.blocks[position]):
                change = float(search.loss(batch, autocast=False)) - reference
            scores[position] = -change if off[position] else change
        return scores


class InsertionScore(AblationScore):
    """Ablation's other end (leave one in instead of one out): the validation loss with every LoRA switched off
    minus with only block l's on. Left out, a block shows what the others cannot make up for; on its own, what its
    LoRA does by itself, whatever the other blocks learned alongside it."""

    name = "insertion"

    def reference(self, search, count: int) -> torch.Tensor:
        return torch.ones(count, dtype=torch.bool)


class BanzhafScore(AblationScore):
    """Between the two ends: on each batch a random set of the blocks' LoRAs is off (each with probability
    `search_block_dropout`, or one half without it), and each block's score is the loss without its LoRA minus with
    it, the others as drawn. Averaged over the batches' draws, the block's mean contribution over the contexts it can
    meet: its Banzhaf value (as in data valuation, Wang & Jia, AISTATS 2023), for ablation's passes. After a search
    with `search_block_dropout`, these are the contexts the LoRAs were trained in, where the all-on set of ablation
    is not: trained to make up for missing blocks, the LoRAs all on overshoot. Draws from the seed."""

    name = "banzhaf"

    def __init__(self):
        self.draws: torch.Generator | None = None

    def reference(self, search, count: int) -> torch.Tensor:
        if self.draws is None:
            self.draws = torch.Generator().manual_seed(search.trainer.args.seed)
        chance = search.options.search_block_dropout or 0.5
        return torch.rand(count, generator=self.draws) < chance


class ForwardScore(AblationScore):
    """Forward selection (stepwise regression's forward pass) on the search's LoRAs: from every block's LoRA off,
    each round switches on the block whose LoRA lowers the validation loss most given those already on, on the same
    `score_val_batches` batches, until the selection rule is met (`positive`: no block lowers it; `top_k`,
    `top_fraction`: their count; the min/max bounds apply). The first round is `insertion`; the later ones discount a
    block whose part of the repair a block already on has made (measured with LoRA on all linear modules: alone, the
    neighbours of a damaged block outrank other damaged blocks). A kept block scores its gain in the round that added
    it, raised to a later round's gain where that is larger (so the ranking is the order of addition); a block left
    out scores its gain in the last round. Each round costs about insertion's passes."""

    name = "forward"

    def __init__(self):
        self.off: torch.Tensor | None = None  # the blocks whose LoRA is off in this round's reference passes

    def reference(self, search, count: int) -> torch.Tensor:
        return self.off.clone()

    def result(self, search, trajectory, val_loader) -> BlockScores:
        options, blocks = search.options, search.gates.blocks
        batches = list(itertools.islice(val_loader, options.score_val_batches))
        tokens = [answer_tokens(batch) for batch in batches]
        self.off = torch.ones(len(blocks), dtype=torch.bool)
        added: list[tuple[int, float, float]] = []  # (block, gain, its standard error), in the order of addition
        rounds = most_kept(options, len(blocks))
        with dropout_off(search.model):
            while len(added) < rounds:
                candidates = self.off.nonzero().flatten().tolist()
                gains = summarise(blocks, [self.measure(search, batch, candidates) for batch in batches],
                                  search.trainer, tokens)
                best = max(candidates, key=lambda position: (gains.scores[blocks[position]], -position))
                gain = gains.scores[blocks[best]]
                if options.selection_rule == "positive" and gain <= 0 and len(added) >= options.selection_min_layers:
                    break
                added.append((blocks[best], gain, gains.stderr[blocks[best]]))
                self.off[best] = False
        left_out = [block for block, off in zip(blocks, self.off.tolist()) if off]
        scores = {block: gains.scores[block] for block in left_out}
        stderr = {block: gains.stderr[block] for block in left_out}
        floor = -math.inf
        for block, gain, error in reversed(added):
            floor = max(floor, gain)
            scores[block], stderr[block] = floor, error
        return BlockScores(scores, stderr, dict.fromkeys(blocks, len(batches)))


class FinalTaylorScore(AfterSearchScore):
    """-d L_val / d mask_l at mask = 1 at the final LoRA: the taylor term measured once instead of averaged over the
    search, i.e. the first-order estimate of the ablation's loss rise, for one forward and backward pass per batch
    instead of one forward pass per block."""

    name = "final_taylor"

    def measure(self, search, batch, positions: list[int]) -> torch.Tensor:
        """Every block's term (one backward pass gives them all)."""
        with search.gates.mask_gradient(), search.lora_frozen():
            (gradient,) = torch.autograd.grad(search.loss(batch, autocast=False), search.gates.mask)
        return -gradient.detach().double()


@contextlib.contextmanager
def dropout_off(model):
    """Within this block the model is in eval mode (dropout off: a batch gives the same losses every pass); its
    training mode is put back after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


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


SCORES = {score.name: score
          for score in (GateScore, TaylorScore, AblationScore, InsertionScore, BanzhafScore, ForwardScore,
                        FinalTaylorScore)}


def get_score(name: str):
    if name not in SCORES:
        raise NotImplementedError(f"selection_score={name!r} is not available; choose one of {sorted(SCORES)}.")
    return SCORES[name]()
