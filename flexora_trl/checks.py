"""Checks before any training: everything the search and the fine-tune need from the trainer, its model and its
options, so that bad input fails with a clear message before a single step (the search's data: `search_data`)."""

from __future__ import annotations

import logging

from peft import PeftModel, PeftType

from .adapter import FRESH_INITS, changes_base_weights, is_plain
from .blocks import BlockMap
from .record import read_selection

logger = logging.getLogger(__name__)


def check_trainer(trainer) -> None:
    """The model carries a LoRA adapter Flexora can search with, and the trainer lets Flexora build the optimizer."""
    model, options = trainer.model, trainer.flexora_args
    if not isinstance(model, PeftModel):
        raise ValueError(
            "Flexora selects the blocks of a LoRA adapter: pass `peft_config=LoraConfig(...)` to the trainer "
            "(or a PeftModel with a LoRA adapter)."
        )
    config = model.peft_config[model.active_adapter]
    if config.peft_type != PeftType.LORA:
        raise ValueError(f"Flexora needs a LoRA adapter; the model's adapter is {config.peft_type.value}.")
    if changes_base_weights(config) and is_quantized(model):
        raise ValueError(
            f"LoraConfig(init_lora_weights={config.init_lora_weights!r}) on a quantized base: the search needs the "
            "original base weights back, which a quantized base cannot give exactly. Use a fresh init "
            f"({', '.join(map(repr, FRESH_INITS))}) with a quantized base."
        )
    if options.search_warm_start and not is_plain(config):
        raise ValueError(
            "`search_warm_start` starts the fine-tune from the search's plain LoRA weights, so it needs a plain "
            "LoraConfig (no `use_dora`, an init in " + ", ".join(map(repr, FRESH_INITS)) + ")."
        )
    if getattr(trainer, "optimizer", None) is not None:
        raise ValueError(
            "Flexora replaces the LoRA after the search, so it builds its own optimizer: do not pass "
            "`optimizers=(optimizer, scheduler)`; use `optim`/`lr_scheduler_type` in the config instead."
        )
    check_distributed_backend(trainer.args)


def given_selection(options, blocks: BlockMap) -> list[int] | None:
    """The blocks the user gave (`selected_layers` or `selection_file`), checked against the model; None: search."""
    if options.selected_layers is not None:
        selected = sorted(options.selected_layers)
    elif options.selection_file is not None:
        selected = sorted(read_selection(options.selection_file))
    else:
        return None
    unknown = sorted(set(selected) - set(blocks.blocks))
    if unknown:
        raise ValueError(f"Selected blocks {unknown} carry no LoRA in this model; candidate blocks: {blocks.blocks}.")
    return selected


def is_quantized(model) -> bool:
    return any(getattr(model, flag, False) for flag in ("is_loaded_in_4bit", "is_loaded_in_8bit", "is_quantized"))


def check_distributed_backend(args) -> None:
    """The search runs on the unwrapped model before the Trainer prepares it: fine for DDP (tested) and for
    DeepSpeed ZeRO-1/2 (untested), wrong where the weights are already sharded (ZeRO-3, FSDP)."""
    deepspeed = getattr(args, "deepspeed_plugin", None)
    if deepspeed is not None and deepspeed.zero_stage == 3:
        raise ValueError(
            "Flexora does not support DeepSpeed ZeRO-3 yet: its search runs on the model before the Trainer wraps "
            "it, and ZeRO-3 has already partitioned the weights. Use DDP (torchrun / accelerate launch) or ZeRO-2."
        )
    if getattr(args, "fsdp", None):
        raise ValueError(
            "Flexora does not support FSDP yet: its search runs on the unsharded model before the Trainer wraps it. "
            "Use DDP (torchrun / accelerate launch) or DeepSpeed ZeRO-2."
        )
    if deepspeed is not None:
        logger.warning("Flexora under DeepSpeed ZeRO-%d is untested; DDP is the tested multi-GPU setup.",
                       deepspeed.zero_stage)
