"""How long the search runs: sized to cost `search_budget` of the fine-tune it precedes, unless the user says.

The cost model counts training samples through a forward and backward pass, the unit a fine-tune step is made of:
an inner step costs one fine-tune step (the same batch through the same model), an outer step adds its validation
micro-batches (`search_val_batches` x `per_device_eval_batch_size`) every `search_outer_every` inner steps, and the
unrolled hypergradient differentiates through `unroll_steps` look-ahead updates with their second-order terms
(counted as 3 passes each). Those passes are scaled by SEARCH_STEP_OVERHEAD, measured against Flexora's own fine-tune
steps, so that the budget is an upper bound. A score measured after the search (`final_taylor`, `ablation`,
`forward`...) adds a fixed cost, counted in the budget too.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

from .selection import most_kept

logger = logging.getLogger(__name__)

# The budget never sizes a search below this many inner steps: LoRA's B must leave zero and the gates need a few
# validation batches before their ranking means anything. Measured (benchmarks/README.md): 8 inner steps select as
# well as 32 in the overfit regime (4 tasks x 2 seeds), and 10 as well as 32 before a 300-step fine-tune (3 tasks, 5
# pairs); shorter searches were not measured.
MIN_SEARCH_STEPS = 8

# What a search step costs beyond its passes, against the fine-tune it precedes: the gates act in every LoRA module, and
# Flexora's fine-tune is cheaper per step than the search's all-block LoRA (its backward stops at the lowest kept block,
# and the other blocks carry no LoRA). Measured with one validation micro-batch (benchmarks/README.md, "The search's
# floor and its cost model, measured"): 2.04-2.36 of Flexora's own fine-tune steps where the passes say 2, on four
# tasks at 300 and 1,000 steps. The largest, rounded up, so that the budget is an upper bound on those runs.
SEARCH_STEP_OVERHEAD = 1.2

# What a score taken after the search costs per validation micro-batch of the training batch's size, in fine-tune
# steps. Measured on SmolLM2 trained in bf16 on a CPU, where the score runs in float32 (outside autocast) and so costs
# more than a bf16 pass (benchmarks/README.md, "The four scores on the `repair` design"): `final_taylor`, one forward
# and backward pass, 1.1-1.6; `ablation`, the full pass about 0.7 and each candidate block's pass from that block up
# about 0.4 (the blocks below replayed; `insertion` and `banzhaf` run the same passes). The upper ends, so a float32
# run's estimate is on the safe side. (per batch, per candidate and batch)
SCORE_STEP_COST = {"final_taylor": (1.6, 0.0),
                   **dict.fromkeys(("ablation", "insertion", "banzhaf", "forward"), (0.7, 0.4))}


@dataclass
class SearchPlan:
    inner_steps: int
    outer_steps: int
    samples: int  # distinct training examples in the search subset (cycled when the steps need more)
    finetune_steps: int  # the planned fine-tune's optimizer steps
    step_cost: float  # one inner step and its share of outer steps, in fine-tune steps
    score_cost: float  # the score after the search (final_taylor, ablation), in fine-tune steps; 0 for the others
    estimated_share: float  # search / fine-tune, estimated
    sized_by: str  # "search_steps", "search_samples", "search_budget" or "floor"

    def as_dict(self) -> dict:
        return {key: round(value, 4) if isinstance(value, float) else value for key, value in asdict(self).items()}


def gate_warmup_steps(fraction: float, steps: int) -> int:
    """Inner steps before the first outer step: `gate_warmup_fraction` of the search, leaving at least one outer."""
    return min(int(fraction * steps), steps - 1)


def inner_step_cost(options, args) -> float:
    """An inner step plus its share of outer steps, in fine-tune steps: samples through forward and backward, times
    the search's measured overhead."""
    train = args.per_device_train_batch_size * args.gradient_accumulation_steps
    outer = options.search_val_batches * args.per_device_eval_batch_size / options.search_outer_every
    if options.hypergradient == "unrolled":
        outer += 3 * options.unroll_steps * train / options.search_outer_every
    return (1.0 + outer / train) * SEARCH_STEP_OVERHEAD


def score_cost(options, args, candidates: int, validation_samples: int | None = None) -> float:
    """The scores' own cost after the search, in fine-tune steps (SCORE_STEP_COST): `selection_score`'s pass and
    `selection_count_score`'s, each on `score_val_batches` validation batches, or as many as `validation_samples`
    fill on each process if that is fewer (a score takes no batch twice); with `score_early_stop`, or `forward` under
    `positive`, the most it can cost."""
    count = options.score_val_batches
    if validation_samples is not None:
        count = min(count, math.ceil(validation_samples / (args.per_device_eval_batch_size * args.world_size)))
    batches = count * args.per_device_eval_batch_size / (
        args.per_device_train_batch_size * args.gradient_accumulation_steps)
    cost = _pass_cost(options.selection_score, candidates, most_kept(options, candidates))
    if options.selection_count_score is not None:  # counted under `positive`: forward may add every block
        cost += _pass_cost(options.selection_count_score, candidates, candidates)
    return batches * cost


def _pass_cost(score: str, candidates: int, rounds: int) -> float:
    """One score's pass on one batch, in fine-tune batches; `forward` takes a round per block it may add (`rounds`),
    each over the blocks still off."""
    per_batch, per_candidate = SCORE_STEP_COST.get(score, (0.0, 0.0))
    if score != "forward":
        return per_batch + per_candidate * candidates
    return sum(per_batch + per_candidate * (candidates - done) for done in range(rounds))


def plan_search(options, args, planned: int, available: int, candidates: int,
                validation_samples: int | None = None) -> SearchPlan:
    """Inner steps and samples of the search over `candidates` blocks, before a fine-tune of `planned` optimizer
    steps. Explicit `search_steps` or `search_samples` win; otherwise the steps that, with the score, cost
    `search_budget` of the planned fine-tune, and never fewer than MIN_SEARCH_STEPS."""
    per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    cost, score = inner_step_cost(options, args), score_cost(options, args, candidates, validation_samples)
    if options.search_steps is not None:
        steps, sized_by = options.search_steps, "search_steps"
    elif options.search_samples is not None:
        steps, sized_by = max(1, math.ceil(min(options.search_samples, available) / per_step)), "search_samples"
    else:
        steps, sized_by = int((options.search_budget * planned - score) / cost), "search_budget"
        if steps < MIN_SEARCH_STEPS:
            steps, sized_by = MIN_SEARCH_STEPS, "floor"
    samples = min(options.search_samples or steps * per_step, available)
    return _plan(options, steps, samples, planned, cost, score, sized_by)


def one_pass(plan: SearchPlan, options, loader_batches: int, accumulation: int) -> SearchPlan:
    """`search_samples` means one pass over the search subset: as many inner steps as its loader gives. With
    Axolotl's sample packing a row holds several examples, so that is fewer than samples / batch size."""
    if plan.sized_by != "search_samples":
        return plan
    steps = max(1, math.ceil(loader_batches / accumulation))
    return _plan(options, steps, plan.samples, plan.finetune_steps, plan.step_cost, plan.score_cost, plan.sized_by)


def _plan(options, steps, samples, planned, cost, score, sized_by) -> SearchPlan:
    outer = (steps - gate_warmup_steps(options.gate_warmup_fraction, steps)) // options.search_outer_every
    return SearchPlan(steps, outer, samples, planned, cost, score, (steps * cost + score) / planned, sized_by)


def announce(plan: SearchPlan, blocks: list[int], budget: float) -> None:
    """The pre-flight line: what the search will do and what share of the run it is estimated to take."""
    score = f", then the score (about {plan.score_cost:.0f} fine-tune steps)" if plan.score_cost else ""
    logger.info(
        "Flexora: searching %d candidate blocks with %d inner + %d outer steps on %d training samples%s; estimated "
        "%.1f %% of the %d-step fine-tune (sized by %s).", len(blocks), plan.inner_steps, plan.outer_steps,
        plan.samples, score, 100 * plan.estimated_share, plan.finetune_steps, plan.sized_by)
    if plan.sized_by == "floor":
        logger.warning(
            "Flexora: the fine-tune is short: the search (%d inner steps) costs %.0f %% of it, over "
            "`search_budget`=%.0f %%: no search shorter than %d inner steps was measured to select as well as longer "
            "ones. Set `search_steps` to override.",
            plan.inner_steps, 100 * plan.estimated_share, 100 * budget, MIN_SEARCH_STEPS)
