"""The Axolotl trainer with Flexora: the shared search mixin in front of Axolotl's own `AxolotlTrainer`.

Axolotl's trainer builder constructs the class `FlexoraPlugin.get_trainer_cls` returns with its usual arguments (an
already-wrapped PeftModel, its collators, `eval_data_collator`, `bench_data_collator`, `dataset_tags`), so the search
runs on Axolotl's datasets, collators and loss; the Flexora options arrive as fields of its training arguments
(`FlexoraPlugin.get_training_args`), the way Axolotl's own integrations pass theirs.
"""

from __future__ import annotations

from axolotl.core.trainers.base import AxolotlTrainer

from flexora_trl.options import FlexoraArguments
from flexora_trl.trainer_mixin import FlexoraTrainerMixin


class AxolotlFlexoraTrainer(FlexoraTrainerMixin, AxolotlTrainer):
    """`AxolotlTrainer` that searches which blocks deserve a LoRA, then fine-tunes a fresh LoRA on those only."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        missing = [name for name in FlexoraArguments.names() if not hasattr(self.args, name)]
        if missing:  # Axolotl merges plugins' training-args fields when it first imports its training arguments
            raise RuntimeError(
                f"The Flexora options ({', '.join(missing[:3])}, ...) are not fields of {type(self.args).__name__}: "
                "axolotl.core.training_args was imported before FlexoraPlugin was registered. List "
                "`axolotl_plugin.FlexoraPlugin` under `plugins:` and load the config before importing Axolotl's "
                "trainers."
            )
        self.flexora_args = FlexoraArguments.from_object(self.args)
        self.flexora_setup()
