"""The selection phase: alternate inner LoRA steps on training batches and outer gate steps on validation batches."""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field

import torch
from accelerate.utils import reduce
from tqdm.auto import tqdm
from transformers import get_scheduler

from .budget import gate_warmup_steps
from .gates import BlockGates
from .group_sparsity import GroupSparsity
from .hypergradient import get_strategy
from .normalized_sgd import NormalizedSGD
from .options import FlexoraArguments
from .scores import get_score
from .selection import choose_blocks
from .temporary import swapped

logger = logging.getLogger(__name__)


@dataclass
class SearchResult:
    alpha: dict[int, float]
    gates: dict[int, float]
    trajectory: list[list[float]] = field(default_factory=list)  # alpha after every outer step
    inner_steps: int = 0
    outer_steps: int = 0
    warmup_steps: int = 0
    seconds: float = 0.0  # the whole search, its score included
    score_seconds: float = 0.0  # the score's own part (after the search for ablation and final_taylor; ~0 otherwise)
    stopped_early: str | None = None
    settled_at: int | None = None  # the inner step after which the selection stopped changing (`search_patience`)
    scores: dict[int, float] = field(default_factory=dict)  # by `selection_score`; alpha for the gate score
    score_stderr: dict[int, float] = field(default_factory=dict)
    score_batches: dict[int, int] | None = None  # validation batches behind each block's score (None for the gate)
    count_scores: dict[int, float] | None = None  # by `selection_count_score`: its blocks above zero set the count
    count_stderr: dict[int, float] | None = None
    group_sparsity_strength: float | None = None  # `search_group_sparsity`'s penalty strength, once measured
    lora_norms: dict[int, float] | None = None  # each block's LoRA B norm after a search with that penalty


class GateSearch:
    """Runs the bilevel search on a trainer's model; the trainer supplies loss, dataloaders, logging and devices."""

    def __init__(self, trainer, gates: BlockGates, options: FlexoraArguments):
        self.trainer = trainer
        self.model = trainer.model
        self.gates = gates
        self.options = options
        self.lora_names, self.lora_params = zip(*[(n, p) for n, p in self.model.named_parameters() if p.requires_grad])
        args = trainer.args
        inner_optimizer = NormalizedSGD if options.search_optimizer == "normalized_sgd" else torch.optim.AdamW
        self.inner_optimizer = inner_optimizer(
            self.lora_params,
            lr=options.search_learning_rate or args.learning_rate,
            betas=(args.adam_beta1, args.adam_beta2),
            eps=args.adam_epsilon,
            weight_decay=args.weight_decay,
        )
        optimizer = torch.optim.SGD if options.gate_optimizer == "sgd" else torch.optim.Adam
        self.gate_optimizer = optimizer([gates.alpha], lr=options.gate_lr)
        self.hypergradient = get_strategy(options.hypergradient)
        self.score = get_score(options.selection_score)
        self._selections: list[tuple[int, ...]] = []  # after every outer step, for `search_patience`
        self.accumulation = args.gradient_accumulation_steps
        # `search_block_dropout`'s draws: their own generator, so the data order and the LoRA init stay those of a
        # search without it (the same on every rank: same seed).
        self.dropout_draws = torch.Generator().manual_seed(args.seed)
        self.group_sparsity = None
        if options.search_group_sparsity:
            self.group_sparsity = GroupSparsity(trainer.flexora_blocks, gates.blocks, options.search_group_sparsity)

    def loss(self, batch, lora_weights=None, autocast: bool = True) -> torch.Tensor:
        """The trainer's own loss (SFT's label masking, loss type...), under its mixed-precision autocast unless
        `autocast` is False (the model's own precision: differences of 1e-4 between two losses survive it).

        `lora_weights` (tensors in the order of `lora_params`) stand in for the LoRA parameters for this one call,
        without touching them: that is how the unrolled hypergradient evaluates theta_K(alpha). That path needs a
        double backward, which fused loss kernels (recent TRL's) lack, so it takes the next-token loss the model
        computes from the collator's labels (TRL's `nll`), or the trainer's `compute_loss_func` if one is set.
        """
        batch = dict(batch)  # compute_loss pops `labels` for custom losses, and look-ahead batches are used twice
        with self.trainer.accelerator.autocast() if autocast else contextlib.nullcontext():
            if lora_weights is None:
                return self.trainer.compute_loss(self.model, batch)
            model = _WithWeights(self.model, self.lora_names, lora_weights)
            custom_loss = getattr(self.trainer, "compute_loss_func", None)
            if custom_loss is None:
                return model(**batch, use_cache=False).loss
            labels = batch.pop("labels")
            return custom_loss(model(**batch, use_cache=False), labels, num_items_in_batch=None)

    @contextlib.contextmanager
    def lora_frozen(self):
        """Outer steps: the LoRA weights leave the graph, so validation gradients cannot reach them."""
        for param in self.lora_params:
            param.requires_grad_(False)
        try:
            yield
        finally:
            for param in self.lora_params:
                param.requires_grad_(True)

    def _average_across_ranks(self, tensors) -> None:
        if self.trainer.accelerator.num_processes > 1:
            for tensor in tensors:
                if tensor.grad is not None:
                    tensor.grad.copy_(reduce(tensor.grad, reduction="mean"))

    def _inner_step(self, batches) -> torch.Tensor:
        """One LoRA optimizer step over `gradient_accumulation_steps` micro-batches, gates detached; returns the
        loss averaged across ranks (a non-finite one skips the step on every rank alike)."""
        total = torch.zeros((), device=self.gates.alpha.device)
        with self._block_dropout():
            for batch in batches:
                loss = self.loss(batch) / len(batches)
                loss.backward()
                total += loss.detach().float()
        self._average_across_ranks(self.lora_params)
        total = _mean_across_ranks(self.trainer, total)
        if not torch.isfinite(total):
            self.inner_optimizer.zero_grad(set_to_none=True)  # a non-finite step is not taken
            return total
        if self.group_sparsity is not None:
            self.group_sparsity.add_gradient()
        if self.trainer.args.max_grad_norm and self.trainer.args.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.lora_params, self.trainer.args.max_grad_norm)
        self.inner_optimizer.step()
        self.inner_optimizer.zero_grad(set_to_none=True)
        return total

    def _block_dropout(self):
        """Within this block each block's LoRA is off with probability `search_block_dropout` (one draw per inner
        step, for all its micro-batches)."""
        if not self.options.search_block_dropout:
            return contextlib.nullcontext()
        draws = torch.rand(len(self.gates.blocks), generator=self.dropout_draws)
        return self.gates.switched_off(draws < self.options.search_block_dropout)

    def _outer_step(self, val_batches, lookahead) -> torch.Tensor:
        self.gate_optimizer.zero_grad(set_to_none=True)
        with self.score.outer_context(self.gates):
            val_loss = self.hypergradient(self, val_batches, lookahead)
        self._average_across_ranks([self.gates.alpha])
        self.gate_optimizer.step()
        return val_loss

    def run(self, train_loader, val_loader, num_inner_steps: int) -> SearchResult:
        """The search loop; the model is already as the hypergradient needs it (`self.hypergradient.context`)."""
        train_batches = _cycle(train_loader)
        val_batches = _cycle(val_loader)
        result = SearchResult(alpha={}, gates={})
        last_good_alpha = self.gates.alpha.detach().clone()
        start = time.perf_counter()
        self.model.train()
        progress = tqdm(
            total=num_inner_steps, desc="Flexora search", disable=not self.trainer.is_local_process_zero()
            or self.trainer.args.disable_tqdm,
        )
        schedule = get_scheduler(self.options.search_lr_scheduler, self.inner_optimizer,
                                 num_warmup_steps=0, num_training_steps=num_inner_steps)
        # The micro-batches of the coming inner steps, fetched ahead so that an unrolled outer step differentiates
        # through exactly the updates the inner loop is about to make.
        upcoming = deque()
        lookahead = self.options.unroll_steps if self.options.hypergradient == "unrolled" else 0
        # Inner steps only at first: while LoRA's B is ~0 the gates get no gradient worth following.
        result.warmup_steps = gate_warmup_steps(self.options.gate_warmup_fraction, num_inner_steps)
        for step in range(1, num_inner_steps + 1):
            while len(upcoming) < 1 + lookahead:
                upcoming.append([next(train_batches) for _ in range(self.accumulation)])
            logs = {"flexora/search_learning_rate": schedule.get_last_lr()[0]}  # the rate this step takes
            train_loss = self._inner_step(upcoming.popleft())
            schedule.step()
            logs["flexora/search_loss"] = train_loss.item()
            if not math.isfinite(logs["flexora/search_loss"]):
                result.stopped_early = f"non-finite training loss at search step {step}"
                logger.warning("Flexora: %s; stopping the search with the last good alpha.", result.stopped_early)
                break
            if step > result.warmup_steps and (step - result.warmup_steps) % self.options.search_outer_every == 0:
                val = [next(val_batches) for _ in range(self.options.search_val_batches)]
                val_loss = _mean_across_ranks(self.trainer, self._outer_step(val, list(upcoming)[:lookahead]))
                result.outer_steps += 1
                if not (torch.isfinite(val_loss) and torch.isfinite(self.gates.alpha).all()):
                    with torch.no_grad():
                        self.gates.alpha.copy_(last_good_alpha)
                    result.stopped_early = f"non-finite validation loss or alpha at search step {step}"
                    logger.warning("Flexora: %s; stopping the search with the last good alpha.", result.stopped_early)
                    break
                last_good_alpha = self.gates.alpha.detach().clone()
                result.trajectory.append(last_good_alpha.cpu().tolist())
                logs["flexora/val_loss"] = val_loss.item()
                if self._settled():
                    result.settled_at = step
            result.inner_steps = step
            progress.update(1)
            progress.set_postfix(loss=f"{logs['flexora/search_loss']:.3f}")
            if step % max(1, int(self.trainer.args.logging_steps or 1)) == 0 or step == num_inner_steps:
                self._log(step, logs)
            if result.settled_at is not None:
                logger.info("Flexora: the selection has not changed for %d outer steps; the search ends at inner "
                            "step %d of %d.", self.options.search_patience, step, num_inner_steps)
                break
        progress.close()
        if result.trajectory:
            score_start = time.perf_counter()
            scores = self.score.result(self, result.trajectory, val_loader)
            result.scores, result.score_stderr, result.score_batches = scores.scores, scores.stderr, scores.batches
            if self.options.selection_count_score is not None:
                counted = get_score(self.options.selection_count_score).result(self, result.trajectory, val_loader)
                result.count_scores, result.count_stderr = counted.scores, counted.stderr
            result.score_seconds = time.perf_counter() - score_start
        result.seconds = time.perf_counter() - start
        result.alpha = self.gates.as_dict()
        result.gates = dict(zip(self.gates.blocks, self.gates.values().detach().cpu().tolist()))
        if self.group_sparsity is not None:
            result.group_sparsity_strength = self.group_sparsity.strength
            result.lora_norms = dict(zip(self.gates.blocks, self.group_sparsity.norms()))
            logger.info("Flexora: group sparsity (strength %.3g) left these LoRA B norms by block: %s",
                        result.group_sparsity_strength, {b: round(v, 4) for b, v in result.lora_norms.items()})
        return result

    def _settled(self) -> bool:
        """Whether the selection the score gives now is the one it gave at each of the last `search_patience` outer
        steps (every rank reaches the same answer: alpha and the averaged scores agree across ranks)."""
        if self.options.search_patience is None:
            return False
        scores = self.score.current(self)
        if scores is None:
            return False
        self._selections.append(tuple(choose_blocks(scores, self.options)))
        recent = self._selections[-(self.options.search_patience + 1) :]
        return len(recent) > self.options.search_patience and len(set(recent)) == 1

    def _log(self, step: int, logs: dict) -> None:
        """Through the trainer's own `log`, so tensorboard/wandb/trackio users see the gates during the search."""
        for block, value in zip(self.gates.blocks, self.gates.values().detach().cpu().tolist()):
            logs[f"flexora/gate_{block}"] = value
        with swapped(self.trainer.state, "global_step", step):
            self.trainer.log(logs)


class _WithWeights(torch.nn.Module):
    """The model with some parameters replaced by given tensors for one forward (torch.func.functional_call), and
    every other attribute read through, so the trainer's `compute_loss` can take it for the real model."""

    def __init__(self, model, names, weights):
        super().__init__()
        self.wrapped = model
        self.weights = dict(zip(names, weights))

    def forward(self, *args, **kwargs):
        return torch.func.functional_call(self.wrapped, self.weights, args, kwargs, strict=False)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.wrapped, name)


def _mean_across_ranks(trainer, value: torch.Tensor) -> torch.Tensor:
    """Every rank sees the same value, so all of them take (or skip) the same steps."""
    return reduce(value, reduction="mean") if trainer.accelerator.num_processes > 1 else value


def _cycle(loader):
    """Endless batches, reshuffling each pass (the sampler's epoch is advanced where it has one)."""
    for epoch in itertools.count():
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        yield from loader
