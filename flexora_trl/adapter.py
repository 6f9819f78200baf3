"""The two LoRAs of a Flexora run, built with PEFT's own adapter API on the one PeftModel the Trainer holds.

The search runs plain LoRA on every candidate block: its gates scale `lora_B`'s output, which is linear only for plain
LoRA, and its init must leave the base weights alone. The fine-tune gets exactly the user's `LoraConfig` (DoRA,
rsLoRA, PiSSA/OLoRA inits, a quantized base...) on the selected blocks only, through `layers_to_transform`. Between
the two, PEFT deletes the search's adapter and adds the user's (`delete_adapter` / `add_adapter`), so `save_model()`
writes a plain PEFT adapter of the user's kind that loads anywhere.
"""

from __future__ import annotations

import copy

import torch
from peft import LoraConfig
from peft.tuners.lora import LoraLayer

from .blocks import BlockMap

SEARCH_ADAPTER = "flexora_search"
FRESH_INITS = (True, False, "gaussian")  # inits that leave the base weights alone
# The fields that give a LoRA its shape and scale; everything else (variants, inits, extra trainables) is the user's
# fine-tune's alone.
SHAPE_FIELDS = ("r", "lora_alpha", "lora_dropout", "target_modules", "exclude_modules", "fan_in_fan_out", "use_rslora",
                "rank_pattern", "alpha_pattern", "layers_to_transform", "layers_pattern", "task_type")


def count_trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def changes_base_weights(config) -> bool:
    """PiSSA, OLoRA, LoftQ, CorDA, EVA...: inits that rewrite the base weights of the layers they adapt."""
    return config.init_lora_weights not in FRESH_INITS or bool(getattr(config, "loftq_config", None))


def is_plain(config) -> bool:
    """A LoRA whose search weights could also start the fine-tune (`search_warm_start`): no variant, a fresh init."""
    return not (getattr(config, "use_dora", False) or changes_base_weights(config))


def search_config(config: LoraConfig) -> LoraConfig:
    """Plain LoRA of the user's shape: the same rank, alpha, scaling, dropout and target modules."""
    return LoraConfig(**{name: copy.deepcopy(getattr(config, name)) for name in SHAPE_FIELDS})


def swap_in_search_adapter(model) -> tuple[str, LoraConfig]:
    """Replace the user's adapter by the search's plain LoRA; returns the user's adapter name and config.

    An init that rewrote the base weights (PiSSA moves the principal components into A and B) is merged back first,
    so the search sees the original model."""
    name = model.active_adapter
    user = copy.deepcopy(model.peft_config[name])
    if changes_base_weights(user):
        with torch.no_grad():
            for layer in model.modules():
                if isinstance(layer, LoraLayer) and name in layer.lora_A:  # base + scale * B A = the original
                    base = layer.get_base_layer().weight
                    base.add_(layer.get_delta_weight(name).to(base.dtype))
    model.add_adapter(SEARCH_ADAPTER, search_config(user))
    model.set_adapter(SEARCH_ADAPTER)
    model.delete_adapter(name)
    return name, user


def lora_on_blocks(model, block_map: BlockMap, selected: list[int], name: str, user: LoraConfig,
                   warm_gates: dict[int, float] | None = None) -> None:
    """The fine-tune's adapter: the user's config on `selected` blocks only, in place of the search's adapter.
    With `warm_gates` (the search's final gate of each block; `search_warm_start`), its A and B start from the
    search's on those blocks, the gate folded into B: the selected blocks' LoRA computes what it did in the search
    (plain LoRA only)."""
    warm = {}
    for block in selected if warm_gates is not None else []:
        for module_name, layer in block_map.modules[block]:
            warm[module_name] = (layer.lora_A[SEARCH_ADAPTER].weight.detach().clone(),
                                 layer.lora_B[SEARCH_ADAPTER].weight.detach() * warm_gates[block])
    model.delete_adapter(SEARCH_ADAPTER)
    config = copy.deepcopy(user)
    config.layers_to_transform = sorted(selected)
    config.layers_pattern = block_map.pattern
    if isinstance(config.target_modules, str):
        # PEFT applies a regex as is, ignoring `layers_to_transform`: spell out the selected modules instead.
        prefix = "base_model.model."
        config.target_modules = sorted(module_name.removeprefix(prefix) for block in selected
                                       for module_name, _ in block_map.modules[block])
    model.add_adapter(name, config)
    model.set_adapter(name)
    for module_name, (lora_a, lora_b) in warm.items():
        layer = model.get_submodule(module_name)
        layer.lora_A[name].weight.data.copy_(lora_a)
        layer.lora_B[name].weight.data.copy_(lora_b)


def reinitialise_lora(model, block_map: BlockMap) -> None:
    """A fresh LoRA on every block, e.g. so the search starts from the seed whatever ran before it."""
    adapter = model.active_adapter
    init = model.peft_config[adapter].init_lora_weights
    for entries in block_map.modules.values():
        for _, layer in entries:
            if init is False:  # PEFT's "no LoRA init": both projections keep nn.Linear's default init
                layer.lora_A[adapter].reset_parameters()
                layer.lora_B[adapter].reset_parameters()
            else:
                layer.reset_lora_parameters(adapter, init)
