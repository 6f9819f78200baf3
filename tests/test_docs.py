"""The READMEs: the options tables are the one generated from FlexoraArguments (no hand-kept second list), and the
configuration given as the paper's is valid and gives the authors' search."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts"))

from options_table import READMES, options_table, readme_table  # noqa: E402


@pytest.mark.parametrize("readme", READMES, ids=os.path.basename)
def test_readme_options_table_is_current(readme):
    assert readme_table(readme) == options_table(), "run: python scripts/options_table.py --write"


def paper_configuration() -> dict:
    """The YAML block of the README's "The paper's configuration, exactly"."""
    import re

    import yaml

    text = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    block = re.search(r"<!-- paper-configuration -->\n```yaml\n(.*?)```\n<!-- /paper-configuration -->", text, re.S)
    return yaml.safe_load(block.group(1))


def test_the_papers_configuration_gives_the_authors_search(tiny_llama_dir, chat_examples, tmp_path):
    """Axolotl validates the block; on the authors' 5,000 samples it plans their 600 inner and 600 outer steps of
    8 validation micro-batches; and a real (smaller) search runs with it and records it."""
    from transformers import TrainingArguments

    from axolotl_helpers import base_config, validate
    from flexora_trl.budget import plan_search
    from flexora_trl.options import FlexoraArguments
    from tiny import flexora_trainer

    paper = paper_configuration()
    block = paper.pop("flexora")
    cfg = validate(base_config(tiny_llama_dir, str(tmp_path / "axolotl"), [{"path": "data.jsonl", "type": "alpaca",
                                                                          "ds_type": "json"}], flexora=block, **paper))
    assert {key: cfg.flexora[key] for key in block} == block
    options = FlexoraArguments(**block)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=paper["micro_batch_size"],
                             per_device_eval_batch_size=paper["eval_batch_size"],
                             gradient_accumulation_steps=paper["gradient_accumulation_steps"], use_cpu=True)
    plan = plan_search(options, args, planned=1000, available=5000 - block["search_holdout_samples"], candidates=32)
    assert (plan.inner_steps, plan.outer_steps, plan.samples) == (600, 600, 4800)

    scaled = dict(block, search_samples=24, search_holdout_samples=8)  # the tiny data's size; every other key as is
    trainer = flexora_trainer(tiny_llama_dir, tmp_path / "trl", chat_examples[:40], max_steps=1,
                              per_device_train_batch_size=paper["micro_batch_size"],
                              per_device_eval_batch_size=paper["eval_batch_size"],
                              gradient_accumulation_steps=paper["gradient_accumulation_steps"], **scaled)
    trainer.train()
    record = trainer.flexora_record
    assert {key: record.options[key] for key in scaled} == scaled
    assert record.search_inner_steps == record.search_outer_steps == 24 // 8
    alpha = record.alpha
    positive = sorted(index for index, value in alpha.items() if value > 0)
    assert record.selected_layers == (positive or [max(alpha, key=alpha.get)])
