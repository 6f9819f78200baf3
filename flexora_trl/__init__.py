"""Flexora layer selection for LoRA fine-tuning (arXiv 2408.10774), as a TRL trainer and an Axolotl plugin core."""

from .options import FlexoraArguments

__all__ = ["FlexoraArguments", "FlexoraTrainerMixin", "FlexoraSFTConfig", "FlexoraSFTTrainer"]
__version__ = "0.1.0"

# The heavy front doors (torch, peft, trl) load on first use, so `flexora_trl.options` stays a cheap import for
# the Axolotl config schema and for tools that only read the option list.
_LAZY = {
    "FlexoraTrainerMixin": ".trainer_mixin",
    "FlexoraSFTConfig": ".config",
    "FlexoraSFTTrainer": ".trainer",
}


def __getattr__(name):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'flexora_trl' has no attribute {name!r}")
