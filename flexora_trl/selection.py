"""Turn the final gate logits into the set of blocks that get a LoRA in the fine-tune."""

from __future__ import annotations

import logging
import math

from .options import FlexoraArguments

logger = logging.getLogger(__name__)


def select_blocks(alpha: dict[int, float], options: FlexoraArguments) -> list[int]:
    """Apply `selection_rule`, then the min/max bounds; ties are broken towards the lower block index."""
    ranked = sorted(alpha, key=lambda block: (-alpha[block], block))
    if options.selection_rule == "positive":
        chosen = [block for block in ranked if alpha[block] > 0]
    elif options.selection_rule == "top_k":
        chosen = ranked[: options.selection_top_k]
    else:
        chosen = ranked[: max(1, math.ceil(options.selection_top_fraction * len(ranked)))]

    minimum = min(options.selection_min_layers, len(ranked))
    if len(chosen) < minimum:
        logger.warning(
            "Flexora: the %s rule kept %d block(s); `selection_min_layers=%d` fills up with the largest gates.",
            options.selection_rule, len(chosen), options.selection_min_layers,
        )
        chosen = ranked[:minimum]
    if options.selection_max_layers is not None and len(chosen) > options.selection_max_layers:
        logger.info("Flexora: `selection_max_layers=%d` drops the smallest gates.", options.selection_max_layers)
        chosen = chosen[: options.selection_max_layers]
    return sorted(chosen)
