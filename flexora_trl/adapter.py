"""Rebuild the LoRA of a PeftModel, in place, on the selected blocks only.

The PeftModel object the Trainer holds stays the same; LoRA layers of unselected blocks are replaced by their base
layers (as `unload()` does, but for some blocks), the others are re-initialised, and the adapter config gets
`layers_to_transform`, so `save_model()` writes a plain PEFT adapter that loads anywhere.
"""

from __future__ import annotations

from .blocks import BlockMap

FRESH_INITS = (True, False, "gaussian")


def count_trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def check_reinitialisable(config) -> None:
    """A fresh LoRA after the search needs an init that leaves the base weights alone (not PiSSA, OLoRA, LoftQ...)."""
    if config.init_lora_weights not in FRESH_INITS:
        raise ValueError(
            f"LoraConfig(init_lora_weights={config.init_lora_weights!r}) changes the base weights at init, so the "
            f"fine-tune cannot start a fresh LoRA after the search. Use one of {FRESH_INITS}."
        )


def restrict_lora_to_blocks(model, block_map: BlockMap, selected: list[int], fresh: bool = True) -> None:
    """Keep LoRA only on `selected` blocks; re-initialise it there unless `fresh` is False (warm start)."""
    adapter = model.active_adapter
    config = model.peft_config[adapter]
    inner = model.base_model.model  # the transformers model; PEFT's keys are relative to it
    prefix = "base_model.model."
    kept_keys = []
    for block, entries in block_map.modules.items():
        for name, layer in entries:
            key = name[len(prefix):] if name.startswith(prefix) else name
            if block not in selected:
                parent = inner.get_submodule(key.rpartition(".")[0])
                setattr(parent, key.rpartition(".")[2], layer.get_base_layer())
                continue
            kept_keys.append(key)
            if fresh:
                _reinitialise(layer, adapter, config.init_lora_weights)

    tuner = model.base_model
    if hasattr(tuner, "targeted_module_names"):
        tuner.targeted_module_names = [k for k in tuner.targeted_module_names if k in set(kept_keys)]
    if isinstance(config.target_modules, str):
        # A regex ignores `layers_to_transform` in PEFT: spell out the kept modules instead.
        config.target_modules = sorted(kept_keys)
    config.layers_to_transform = sorted(selected)
    config.layers_pattern = block_map.pattern


def reinitialise_lora(model, block_map: BlockMap) -> None:
    """A fresh LoRA on every block, e.g. so the search starts from the seed whatever ran before it."""
    adapter = model.active_adapter
    init = model.peft_config[adapter].init_lora_weights
    for entries in block_map.modules.values():
        for _, layer in entries:
            _reinitialise(layer, adapter, init)


def _reinitialise(layer, adapter: str, init_lora_weights) -> None:
    if init_lora_weights is False:  # PEFT's "no LoRA init": both projections keep nn.Linear's default init
        layer.lora_A[adapter].reset_parameters()
        layer.lora_B[adapter].reset_parameters()
    else:
        layer.reset_lora_parameters(adapter, init_lora_weights)

