"""The `flexora:` block of an Axolotl config, and the checks that tie it to the rest of the config.

The block's fields, defaults and help texts are read off `flexora_trl.options.FlexoraArguments`, the dataclass the TRL
config inherits too (and so are the training-args fields the options reach the trainer through), and its values go
through the same `FlexoraArguments.validate()`, so a YAML block and a `FlexoraSFTConfig` reject bad input with the same
message. Everything that needs other Axolotl keys (adapter, eval
split, packing, layer freezing) is checked here, at config-validation time, before any model is loaded.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from flexora_trl.options import FlexoraArguments

# Keys of the Axolotl config that pick or freeze layers themselves: they fight with a selection made by the search.
LAYER_CHOOSERS = {
    "peft_layers_to_transform": "it fixes the LoRA blocks by hand (to skip the search, give them as "
    "`flexora.selected_layers`)",
    "unfrozen_parameters": "it trains chosen base weights instead of a LoRA",
    "lisa_n_layers": "LISA switches the trained layers during training",
    "lisa_step_interval": "LISA switches the trained layers during training",
    "relora": "ReLoRA merges and restarts the LoRA during training",
}
# Fused LoRA kernels compute the LoRA branch without calling `lora_B`, where Flexora's gate sits.
LORA_KERNELS = ("lora_mlp_kernel", "lora_qkv_kernel", "lora_o_kernel", "lora_embedding_kernel")


def _block_fields() -> dict:
    """One pydantic field per FlexoraArguments field: same name, type, default and help text."""
    hints = typing.get_type_hints(FlexoraArguments)
    fields = {}
    for spec in dataclasses.fields(FlexoraArguments):
        if spec.default_factory is not dataclasses.MISSING:
            default = Field(default_factory=spec.default_factory, description=spec.metadata.get("help"))
        else:
            default = Field(default=spec.default, description=spec.metadata.get("help"))
        fields[spec.name] = (hints[spec.name], default)
    return fields


def _training_args_fields() -> list:
    """One dataclass field per FlexoraArguments field: same name, type, default and help text."""
    hints = typing.get_type_hints(FlexoraArguments)
    return [(spec.name, hints[spec.name],
             dataclasses.field(default=spec.default, default_factory=spec.default_factory, metadata=spec.metadata))
            for spec in dataclasses.fields(FlexoraArguments)]


# The Flexora options as fields of Axolotl's training arguments (`FlexoraPlugin.get_training_args_mixin`): the
# plugin fills them from the `flexora:` block and the trainer reads them off `self.args`, as Axolotl's KD does.
FlexoraTrainingArgsMixin = dataclasses.make_dataclass("FlexoraTrainingArgsMixin", _training_args_fields())
FlexoraTrainingArgsMixin.__module__ = __name__


class _FlexoraBlockChecks(BaseModel):
    """Unknown keys are an error (a typo would otherwise be dropped silently); values are checked by FlexoraArguments."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data):
        if isinstance(data, dict):
            names = FlexoraArguments.names()
            unknown = [key for key in data if key not in names]
            if unknown:
                hints = []
                for key in unknown:
                    close = difflib.get_close_matches(str(key), names, n=1)
                    hints.append(f"`{key}`" + (f" (did you mean `{close[0]}`?)" if close else ""))
                raise ValueError(
                    f"unknown option(s) in `flexora:`: {', '.join(hints)}. Accepted options: {', '.join(names)}."
                )
        return data

    @model_validator(mode="after")
    def _values(self):
        FlexoraArguments(**self.model_dump()).validate()
        return self


FlexoraConfig = create_model(
    "FlexoraConfig",
    __base__=_FlexoraBlockChecks,
    __module__=__name__,
    __doc__="Options of the Flexora layer search; same names and defaults as `FlexoraSFTConfig`.",
    **_block_fields(),
)


class FlexoraArgs(BaseModel):
    """Input args for the Flexora plugin: one `flexora:` block; without it the plugin changes nothing."""

    flexora: FlexoraConfig | None = Field(  # type: ignore[valid-type]
        default=None,
        json_schema_extra={
            "description": "Flexora layer selection: search which transformer blocks are worth a LoRA, then fine-tune "
            "a fresh LoRA on those only. `flexora: {}` turns it on with the defaults."
        },
    )

    @model_validator(mode="after")
    def _check_against_axolotl_config(self):
        if self.flexora is not None:
            check_axolotl_config(self, self.flexora)
        return self


def check_axolotl_config(cfg, flexora) -> None:
    """Reject Axolotl settings the Flexora search cannot run with, naming the key and what to do instead."""

    def get(key):
        return getattr(cfg, key, None)

    if get("adapter") not in ("lora", "qlora"):
        raise ValueError(
            f"`flexora` selects the blocks that get a LoRA adapter, so it needs `adapter: lora` or `adapter: qlora`; "
            f"got `adapter: {get('adapter')}`."
        )
    if get("rl") or get("reward_model") or get("process_reward_model"):
        key = "rl" if get("rl") else "reward_model" if get("reward_model") else "process_reward_model"
        raise ValueError(f"`flexora` runs supervised fine-tuning only; remove `{key}` or the `flexora:` block.")
    if get("trainer_cls"):
        raise ValueError("`trainer_cls` conflicts with `flexora`: the Flexora plugin provides the trainer class.")
    if flexora.search_validation == "eval_dataset" and not get("val_set_size") and not get("test_datasets"):
        raise ValueError(
            "`flexora.search_validation: eval_dataset` needs an eval dataset, but `val_set_size` is 0 and there are "
            "no `test_datasets`. Set `val_set_size` (e.g. 0.05) or `test_datasets`, or use "
            "`search_validation: holdout` to hold examples out of the training set."
        )
    if get("sample_packing") and flexora.hypergradient == "unrolled":
        raise ValueError(
            "`sample_packing: true` with `flexora.hypergradient: unrolled`: the unrolled search runs eager attention, "
            "which attends across the examples of a packed row. Use `hypergradient: first_order` (the default) or "
            "`sample_packing: false`."
        )
    for key, why in LAYER_CHOOSERS.items():
        if get(key):
            raise ValueError(
                f"`{key}` conflicts with `flexora`: {why}, while Flexora selects the LoRA blocks itself. Remove `{key}`."
            )
    for key in LORA_KERNELS:
        if get(key):
            raise ValueError(
                f"`{key}: true` conflicts with `flexora`: fused LoRA kernels skip the `lora_B` call where Flexora "
                f"gates each block. Set `{key}: false` (the plugin turns these kernels off when they are not set)."
            )
