"""Turn the blocks' scores (gate logits, or the `taylor` / `ablation` scores) into the set of blocks that get a LoRA in
the fine-tune, and say whether the kept and dropped blocks are told apart beyond the noise of the validation batches."""

from __future__ import annotations

import logging
import math

from .options import FlexoraArguments

logger = logging.getLogger(__name__)


def _by_rule(scores: dict[int, float], options: FlexoraArguments, count: int | None = None
             ) -> tuple[list[int], list[int]]:
    """All blocks ranked (ties towards the lower index), and those kept before the bounds: `count` of them when a
    count is given (`selection_count_score`), else as `selection_rule` says."""
    ranked = sorted(scores, key=lambda block: (-scores[block], block))
    if count is not None:
        return ranked, ranked[:count]
    if options.selection_rule == "positive":
        return ranked, [block for block in ranked if scores[block] > 0]
    return ranked, ranked[: _rule_count(options, len(ranked))]


def positive_count(count_scores: dict[int, float] | None) -> int | None:
    """How many blocks `selection_count_score` counts: those whose score is above zero (None without that score)."""
    return None if count_scores is None else sum(value > 0 for value in count_scores.values())


def _rule_count(options: FlexoraArguments, count: int) -> int | None:
    """How many of `count` blocks `top_k` or `top_fraction` keeps before the bounds; None for `positive`."""
    if options.selection_rule == "top_k":
        return options.selection_top_k
    if options.selection_rule == "top_fraction":
        return max(1, math.ceil(options.selection_top_fraction * count))
    return None


def choose_blocks(scores: dict[int, float], options: FlexoraArguments, count: int | None = None) -> list[int]:
    """Apply `selection_rule` (or keep the `count` highest), then the min/max bounds (quietly: also used while the
    search runs)."""
    return _bounded(*_by_rule(scores, options, count), options)


def _bounded(ranked: list[int], chosen: list[int], options: FlexoraArguments) -> list[int]:
    """`chosen` filled up to `selection_min_layers` from the top of `ranked`, then cut to `selection_max_layers`."""
    if len(chosen) < min(options.selection_min_layers, len(ranked)):
        chosen = ranked[: options.selection_min_layers]
    if options.selection_max_layers is not None:
        chosen = chosen[: options.selection_max_layers]
    return sorted(chosen)


def most_kept(options: FlexoraArguments, count: int) -> int:
    """The most blocks out of `count` that the rule and the min/max bounds can keep (all for `positive`)."""
    wanted = _rule_count(options, count)
    wanted = max(count if wanted is None else wanted, options.selection_min_layers)
    if options.selection_max_layers is not None:
        wanted = min(wanted, options.selection_max_layers)
    return min(wanted, count)


def boundary(scores: dict[int, float], options: FlexoraArguments) -> float | None:
    """The score that separates the kept blocks from the dropped ones: 0 where `positive`'s sign alone decided (even
    if it kept every block), else halfway between the weakest kept and the strongest dropped score; None when a
    count alone decided and nothing is dropped."""
    kept = choose_blocks(scores, options)
    dropped = [block for block in scores if block not in kept]
    if options.selection_rule == "positive" and all(scores[b] > 0 for b in kept) and all(
            scores[b] <= 0 for b in dropped):
        return 0.0
    if not kept or not dropped:
        return None
    return (min(scores[b] for b in kept) + max(scores[b] for b in dropped)) / 2


def select_blocks(scores: dict[int, float], options: FlexoraArguments,
                  count_scores: dict[int, float] | None = None) -> list[int]:
    """`choose_blocks`, with the count from `count_scores` when given, saying in the log what set the count and when
    the min/max bounds changed it."""
    count = positive_count(count_scores)
    if count is not None:
        logger.info("Flexora: %d of %d blocks' LoRA lower the validation loss by %s; keeping the %d highest by %s.",
                    count, len(count_scores), options.selection_count_score, count, options.selection_score)
    ranked, kept = _by_rule(scores, options, count)
    if len(kept) < min(options.selection_min_layers, len(ranked)):
        logger.warning(
            "Flexora: the %s rule kept %d block(s); `selection_min_layers=%d` fills up with the highest scores.",
            options.selection_rule if count is None else "count", len(kept), options.selection_min_layers,
        )
    elif options.selection_max_layers is not None and len(kept) > options.selection_max_layers:
        logger.info("Flexora: `selection_max_layers=%d` drops the lowest scores.", options.selection_max_layers)
    return _bounded(ranked, kept, options)


def separation(scores: dict[int, float], stderr: dict[int, float], selected: list[int]) -> dict:
    """The gap between the weakest kept and the strongest dropped block, against two standard errors of that
    difference: a gap inside the noise means the selection at the boundary is a coin flip. No spread at all (a score
    measured on one validation batch) is no noise estimate: `separated` is then None, not True."""
    kept = [b for b in scores if b in selected]
    dropped = [b for b in scores if b not in selected]
    if not kept or not dropped:
        return {"gap": None, "noise": None, "separated": True}
    weakest = min(kept, key=lambda b: (scores[b], -b))
    strongest = max(dropped, key=lambda b: (scores[b], -b))
    gap = scores[weakest] - scores[strongest]
    noise = 2 * math.sqrt(stderr.get(weakest, 0.0) ** 2 + stderr.get(strongest, 0.0) ** 2)
    return {"gap": gap, "noise": noise, "separated": gap > noise if noise > 0 else None, "weakest_kept": weakest,
            "strongest_dropped": strongest}


def log_scores(name: str, result, selected: list[int], split: dict) -> None:
    """Each block's score with its standard error, and a warning when the selection's boundary is inside the noise."""
    ranked = sorted(result.scores, key=lambda b: -result.scores[b])
    logger.info("Flexora: %s score per block (+- standard error over validation batches; * = kept): %s", name,
                ", ".join(f"{b}{'*' if b in selected else ''} {result.scores[b]:.4g}+-{result.score_stderr[b]:.2g}"
                          for b in ranked))
    counts = set((result.score_batches or {}).values())
    if len(counts) > 1:  # only `score_early_stop` measures blocks on different numbers of batches
        logger.info("Flexora: `score_early_stop` measured each block on %d to %d validation batches (%d block-batches "
                    "in all).", min(counts), max(counts), sum(result.score_batches.values()))
    if split["separated"] is None:
        logger.warning(
            "Flexora: the %s score has no spread to compare the weakest kept block (%d) and the strongest dropped "
            "one (%d) with (one validation batch, or too few outer steps): whether the selection holds is unmeasured. "
            "Raise `search_holdout_samples` to several evaluation batches, or the search budget, for a noise "
            "estimate.",
            name, split["weakest_kept"], split["strongest_dropped"])
    elif not split["separated"]:
        logger.warning(
            "Flexora: the weakest kept block (%d) and the strongest dropped one (%d) differ by %.3g in %s score, "
            "within the noise (2 standard errors: %.3g): the selection at its boundary is a coin flip (in the "
            "benchmarks, such selections were level with random blocks of their count). Raise the search budget "
            "(`search_samples`, `search_val_batches`) for a selection that holds.",
            split["weakest_kept"], split["strongest_dropped"], split["gap"], name, split["noise"])
