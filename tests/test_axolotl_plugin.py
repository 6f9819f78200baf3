"""The `flexora:` block and its config-time checks, through Axolotl's own config validation (no model is loaded)."""

from __future__ import annotations

import dataclasses
import re

import pytest
import yaml

pytest.importorskip("axolotl")

from axolotl_helpers import RECIPES, base_config, validate  # noqa: E402

from flexora_trl.options import FlexoraArguments  # noqa: E402

DATASET = [{"path": "data.jsonl", "type": "alpaca", "ds_type": "json"}]


def config(**overrides) -> dict:
    return base_config("/nonexistent/tiny-model", "/tmp/flexora-unused-output", DATASET, **overrides)


def expected_message(**options) -> str:
    with pytest.raises(ValueError) as raised:
        FlexoraArguments(**options).validate()
    return str(raised.value)


def test_block_validates_with_the_dataclass_defaults():
    cfg = validate(config(flexora={}))
    assert cfg.flexora == {k: v for k, v in FlexoraArguments().to_dict().items() if v is not None}


def test_block_fields_are_the_dataclass_fields():
    from axolotl_plugin.args import FlexoraConfig, FlexoraTrainingArgsMixin

    for spec in dataclasses.fields(FlexoraArguments):
        field = FlexoraConfig.model_fields[spec.name]
        assert field.default == spec.default
        assert field.description == spec.metadata["help"]
    assert list(FlexoraConfig.model_fields) == FlexoraArguments.names()
    assert vars(FlexoraTrainingArgsMixin()) == FlexoraArguments().to_dict()  # the training-args fields too


def test_given_values_reach_the_trainer_options():
    """The block's values become training-args fields (Axolotl's `get_training_args`), which the trainer reads."""
    from axolotl_plugin import FlexoraPlugin
    from axolotl_plugin.args import FlexoraTrainingArgsMixin
    from axolotl_plugin.trainer import AxolotlFlexoraTrainer

    plugin = FlexoraPlugin()
    cfg = validate(config(flexora={"selection_rule": "top_k", "selection_top_k": 3, "gate_lr": "2e-2"}))
    assert plugin.get_trainer_cls(cfg) is AxolotlFlexoraTrainer
    assert plugin.get_training_args_mixin() == "axolotl_plugin.args.FlexoraTrainingArgsMixin"
    training_args = FlexoraTrainingArgsMixin(**plugin.get_training_args(cfg))
    assert FlexoraArguments.from_object(training_args) == FlexoraArguments(
        selection_rule="top_k", selection_top_k=3, gate_lr=0.02)


def test_an_explicit_null_reaches_the_trainer_options():
    """Axolotl drops nulls from the validated config, so a null can only reach the trainer as the option's default:
    every option that takes null must default to it (else `search_samples: null`, the budget-sized search, would
    silently become a number)."""
    import dataclasses
    import typing

    from axolotl.integrations.base import PluginManager

    nullable = [f for f in dataclasses.fields(FlexoraArguments)
                if type(None) in typing.get_args(typing.get_type_hints(FlexoraArguments)[f.name])]
    assert {f.name for f in nullable} >= {"search_samples", "search_steps", "selection_file"}
    assert {f.name: f.default for f in nullable if f.default is not None} == {}

    cfg = validate(config(flexora={"search_samples": None, "search_budget": 0.05}))
    assert "search_samples" not in cfg.flexora  # what Axolotl's validation does to a null
    plugin = PluginManager.get_instance().plugins["axolotl_plugin.FlexoraPlugin"]
    options = FlexoraArguments(**plugin.get_training_args(cfg))
    assert options.search_samples is None and options.search_budget == 0.05


def test_without_the_block_the_plugin_changes_nothing():
    from axolotl_plugin import FlexoraPlugin

    with_plugin = validate(config(flexora=None))
    without_plugin = validate(config(flexora=None, plugins=None))
    assert "flexora" not in with_plugin
    assert FlexoraPlugin().get_trainer_cls(with_plugin) is None
    with_plugin.pop("plugins")
    assert with_plugin == without_plugin


@pytest.mark.parametrize("gpu", [False, True])
def test_fused_lora_kernels_are_turned_off(gpu):
    """Axolotl auto-enables fused LoRA kernels, which skip the gates; the plugin keeps them off, on CPU and GPU."""
    cfg = validate(config(flexora={}), gpu=gpu)
    assert not any(cfg.get(key) for key in ("lora_mlp_kernel", "lora_qkv_kernel", "lora_o_kernel"))


def test_unknown_key_is_named_with_a_suggestion():
    with pytest.raises(ValueError, match=r"`search_sample` \(did you mean `search_samples`\?\)"):
        validate(config(flexora={"search_sample": 100}))


@pytest.mark.parametrize(
    "options",
    [
        {"search_samples": 0},
        {"search_holdout_samples": -1},
        {"gate_lr": 0},
        {"selection_rule": "best"},
        {"hypergradient": "second_order"},
        {"search_lr_scheduler": "cosine_with_restarts"},
        {"search_optimizer": "adam"},
        {"search_validation": "test"},
        {"selection_rule": "top_k"},
        {"selection_rule": "top_fraction", "selection_top_fraction": 1.5},
        {"selection_min_layers": 4, "selection_max_layers": 2},
        {"selected_layers": [1, 1]},
    ],
)
def test_out_of_range_values_give_the_dataclass_message(options):
    message = expected_message(**options)
    assert re.search(r"`\w+`|\w+=", message)  # the dataclass names the option
    with pytest.raises(ValueError, match=re.escape(message)):
        validate(config(flexora=options))


def test_wrong_type_names_the_key():
    with pytest.raises(ValueError, match=r"flexora\.search_samples"):
        validate(config(flexora={"search_samples": "many"}))


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"adapter": None}, "adapter"),
        ({"adapter": "llama-adapter"}, "adapter"),
        ({"peft_layers_to_transform": [0, 1]}, "peft_layers_to_transform"),
        ({"unfrozen_parameters": ["^model.layers.0.*"]}, "unfrozen_parameters"),
        ({"lisa_n_layers": 2, "lisa_step_interval": 10}, "lisa_n_layers"),
        ({"relora": True, "jagged_restart_steps": 10}, "relora"),
        ({"lora_qkv_kernel": True}, "lora_qkv_kernel"),
        ({"reward_model": True}, "reward_model"),
        ({"trainer_cls": "axolotl.core.trainers.base.AxolotlTrainer"}, "trainer_cls"),
    ],
)
def test_conflicting_axolotl_settings_are_named(overrides, key):
    with pytest.raises(ValueError, match=re.escape(f"`{key}")) as raised:
        validate(config(flexora={}, **overrides))
    assert "flexora" in str(raised.value)


def test_sample_packing_refuses_only_the_unrolled_search():
    validate(config(flexora={}, sample_packing=True))
    with pytest.raises(ValueError, match="`sample_packing: true` with `flexora.hypergradient: unrolled`"):
        validate(config(flexora={"hypergradient": "unrolled"}, sample_packing=True))


def test_eval_dataset_validation_needs_an_eval_split():
    block = {"search_validation": "eval_dataset"}
    with pytest.raises(ValueError, match=r"`val_set_size` is 0 and there are no `test_datasets`"):
        validate(config(flexora=block))
    validate(config(flexora=block, val_set_size=0.1))
    validate(config(flexora=block, test_datasets=[{"path": "eval.jsonl", "type": "alpaca", "ds_type": "json",
                                                   "split": "train"}]))
    validate(config(flexora={}))  # the default hold-out needs no eval split


def test_plugin_refuses_a_trainer_supplied_by_another_plugin():
    from axolotl.utils.dict import DictDefault

    from axolotl_plugin import FlexoraPlugin

    with pytest.raises(RuntimeError, match="another plugin"):
        FlexoraPlugin().post_trainer_create(DictDefault(flexora={}), trainer=object())


def recipe_paths():
    return sorted(RECIPES.glob("*.yml"))


def test_there_are_recipes():
    names = {path.name for path in recipe_paths()}
    assert {"smollm2-135m-flexora-cpu.yml", "llama3-8b-flexora-alpaca.yml", "qwen2.5-7b-instruct-flexora-chat.yml",
            "mistral-7b-flexora-qlora.yml"} <= names


@pytest.mark.parametrize("path", recipe_paths(), ids=lambda path: path.name)
def test_recipe_passes_axolotl_validation(path):
    raw = yaml.safe_load(path.read_text())
    assert "axolotl_plugin.FlexoraPlugin" in raw["plugins"] and raw.get("flexora") is not None
    cfg = validate(raw, gpu="cpu" not in path.name)
    assert cfg.flexora is not None and cfg.adapter in ("lora", "qlora")
