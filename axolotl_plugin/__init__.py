"""Flexora layer selection as an Axolotl plugin.

    plugins:
      - axolotl_plugin.FlexoraPlugin
    flexora:
      selection_rule: positive

The plugin adds the `flexora:` block to the config schema and, when the block is there, passes its options to the
training arguments and hands Axolotl a trainer that reads them there, searches which blocks deserve a LoRA and trains a
fresh LoRA on them. Without the block it returns nothing from
any hook, so Axolotl runs exactly as without the plugin.
"""

from __future__ import annotations

from axolotl.integrations.base import BasePlugin
from axolotl.utils.logging import get_logger

from flexora_trl.options import FlexoraArguments

from .args import LORA_KERNELS
from .args import FlexoraArgs as FlexoraArgs

LOG = get_logger(__name__)


def flexora_enabled(cfg) -> bool:
    return cfg.get("flexora") is not None


class FlexoraPlugin(BasePlugin):
    """Axolotl plugin: `flexora:` config block + the Flexora trainer."""

    def get_input_args(self) -> str:
        return "axolotl_plugin.args.FlexoraArgs"

    def register(self, cfg):
        """Axolotl turns its fused LoRA kernels on when they are unset; they skip the gates, so Flexora keeps them off.
        Done on the raw config because the order of Axolotl's and a plugin's schema validators is not fixed."""
        if flexora_enabled(cfg):
            for key in LORA_KERNELS:
                if cfg.get(key) is None:
                    cfg[key] = False

    def get_training_args_mixin(self) -> str:
        return "axolotl_plugin.args.FlexoraTrainingArgsMixin"

    def get_training_args(self, cfg):
        """The `flexora:` block's options (validated with the config) as training-args fields for the trainer.
        Axolotl's validated config drops every null (`model_dump(exclude_none=True)`); every option that takes null
        defaults to it, so a dropped null means what the user wrote."""
        if not flexora_enabled(cfg):
            return None
        return {name: cfg.flexora[name] for name in FlexoraArguments.names() if name in cfg.flexora}

    def get_trainer_cls(self, cfg):
        if not flexora_enabled(cfg):
            return None
        from .trainer import AxolotlFlexoraTrainer

        return AxolotlFlexoraTrainer

    def post_trainer_create(self, cfg, trainer):
        """Another plugin listed earlier may have supplied its own trainer; Flexora would then silently not run."""
        if not flexora_enabled(cfg):
            return
        from flexora_trl.trainer_mixin import FlexoraTrainerMixin

        if not isinstance(trainer, FlexoraTrainerMixin):
            raise RuntimeError(
                f"`flexora:` is set, but the trainer is {type(trainer).__name__}, supplied by another plugin listed "
                "before axolotl_plugin.FlexoraPlugin. List FlexoraPlugin first or remove the other trainer."
            )
        LOG.info("Flexora options: %s", trainer.flexora_args.to_dict())
