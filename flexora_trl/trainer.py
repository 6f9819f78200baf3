"""`FlexoraSFTTrainer`: TRL's `SFTTrainer` with the Flexora selection phase before normal SFT."""

from __future__ import annotations

from trl import SFTTrainer

from .model_card import PAPER, TAG
from .options import FlexoraArguments
from .trainer_mixin import FlexoraTrainerMixin


class FlexoraSFTTrainer(FlexoraTrainerMixin, SFTTrainer):
    """Drop-in for `SFTTrainer`: takes a `FlexoraSFTConfig` and a LoRA `peft_config`, searches which transformer
    blocks deserve LoRA, then trains a fresh LoRA on those blocks only and saves it as a plain PEFT adapter."""

    _tag_names = [*SFTTrainer._tag_names, TAG]
    _name = "Flexora SFT"
    _paper = PAPER

    def __init__(self, *args, **kwargs):
        dataset = kwargs.get("train_dataset")
        if dataset is not None and hasattr(dataset, "__len__") and len(dataset) == 0:
            raise ValueError("`train_dataset` is empty: Flexora's search and the fine-tune need training examples.")
        super().__init__(*args, **kwargs)
        # A plain SFTConfig works too: Flexora then runs with its default options.
        is_flexora_config = isinstance(self.args, FlexoraArguments)
        self.flexora_args = FlexoraArguments.from_object(self.args) if is_flexora_config else FlexoraArguments()
        self.flexora_setup()
