"""Flexora layer selection for LoRA fine-tuning (arXiv 2408.10774), as a TRL trainer."""

from .options import FlexoraArguments
from .trainer_mixin import FlexoraTrainerMixin

__all__ = ["FlexoraArguments", "FlexoraTrainerMixin", "FlexoraSFTConfig", "FlexoraSFTTrainer"]
__version__ = "0.1.0"


def __getattr__(name):
    # The TRL front door imports trl lazily, so `flexora_trl.options` / the mixin stay cheap for the Axolotl plugin.
    if name == "FlexoraSFTConfig":
        from .config import FlexoraSFTConfig

        return FlexoraSFTConfig
    if name == "FlexoraSFTTrainer":
        from .trainer import FlexoraSFTTrainer

        return FlexoraSFTTrainer
    raise AttributeError(name)
