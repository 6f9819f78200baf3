"""`FlexoraSFTConfig`: TRL's `SFTConfig` plus the Flexora options (see `options.FlexoraArguments`)."""

from __future__ import annotations

from dataclasses import dataclass

from trl import SFTConfig

from .options import FlexoraArguments


@dataclass
class FlexoraSFTConfig(SFTConfig, FlexoraArguments):
    """Configuration of `FlexoraSFTTrainer`: every `SFTConfig` field plus the Flexora search and selection options.

    The Flexora fields (`search_samples`, `gate_lr`, `selection_rule`, ...) are documented in
    `flexora_trl.options.FlexoraArguments`; they parse from the command line and YAML like any TRL option.
    """

    def __post_init__(self):
        self.validate()  # Flexora's own options first: they need nothing from the rest of the config
        super().__post_init__()
