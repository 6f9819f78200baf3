"""The Axolotl trainer with Flexora: the shared search mixin in front of Axolotl's own `AxolotlTrainer`.

Axolotl's trainer builder constructs the class it gets from `FlexoraPlugin.get_trainer_cls` with its usual arguments
(an already-wrapped PeftModel, its collators, `eval_data_collator`, `bench_data_collator`, `dataset_tags`), so the
search runs on Axolotl's datasets, collators and loss. The builder has no way to pass Flexora options, so the plugin
binds them to a subclass with `with_options` instead of leaving them in global state.
"""

from __future__ import annotations

from axolotl.core.trainers.base import AxolotlTrainer

from flexora_trl.options import FlexoraArguments
from flexora_trl.trainer_mixin import FlexoraTrainerMixin


class AxolotlFlexoraTrainer(FlexoraTrainerMixin, AxolotlTrainer):
    """`AxolotlTrainer` that searches which blocks deserve a LoRA, then fine-tunes a fresh LoRA on those only."""

    flexora_options: FlexoraArguments | None = None  # set on the subclass `with_options` returns

    def __init__(self, *args, flexora_args: FlexoraArguments | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.flexora_args = flexora_args or self.flexora_options or FlexoraArguments()
        self.flexora_setup()

    @classmethod
    def with_options(cls, options: FlexoraArguments) -> type[AxolotlFlexoraTrainer]:
        """This class with `options` as the Flexora options of every instance (what the trainer builder constructs)."""
        return type(cls.__name__, (cls,), {"flexora_options": options, "__module__": cls.__module__,
                                            "__doc__": cls.__doc__})
