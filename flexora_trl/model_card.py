"""The model card's Flexora section: which blocks carry the LoRA, how they were chosen, and where the record is.

The card itself stays the trainer's own (TRL's for `FlexoraSFTTrainer`, Transformers' for Axolotl's trainer); this
section is appended to it, so `push_to_hub` and Axolotl's end-of-training card need nothing else.
"""

from __future__ import annotations

import os

from .record import RECORD_NAME, SelectionRecord

PAPER = {
    "title": "Flexora: Flexible Low-Rank Adaptation for Large Language Models",
    "id": "2408.10774",
    "citation": """\
@inproceedings{wei2025flexora,
    title     = {{Flexora: Flexible Low-Rank Adaptation for Large Language Models}},
    author    = {Chenxing Wei and Yao Shu and Ying Tiffany He and Fei Yu},
    booktitle = {Proceedings of the 63rd Annual Meeting of the Association for Computational Linguistics},
    year      = 2025,
    doi       = {10.18653/v1/2025.acl-long.713},
}""",
}
TAG = "flexora"


def selection_section(record: SelectionRecord) -> str:
    """Markdown for the end of the card, from the selection record."""
    blocks = record.selected_layers
    lines = [
        "## Flexora layer selection",
        "",
        f"LoRA was trained on {len(blocks)} of the {record.num_layers} transformer blocks, chosen by Flexora "
        f"([{PAPER['title']}](https://arxiv.org/abs/{PAPER['id']})): blocks {', '.join(map(str, blocks))}. "
        "The adapter is a plain PEFT LoRA (`layers_to_transform`): it loads without Flexora.",
        "",
    ]
    if record.lora_params_selected is not None:
        lines.append(f"- LoRA parameters: {record.lora_params_selected:,} of {record.lora_params_all_blocks:,} "
                     f"({100 * record.lora_params_selected / record.lora_params_all_blocks:.1f} %)")
    if record.source == "search":
        lines.append(f"- Search: {record.search_inner_steps} inner and {record.search_outer_steps} gate steps "
                     f"on {record.search_samples} training examples, {record.search_seconds:.0f} s; blocks "
                     f"ranked by `selection_score={record.selection_score}`, kept by "
                     f"`selection_rule={record.options['selection_rule']}`")
    else:
        lines.append(f"- Blocks given by the user ({record.source}), no search")
    lines += [f"- Every block's score and gate, the options and the versions: `{RECORD_NAME}` beside the adapter", ""]
    return "\n".join(lines)


def append_selection_section(output_dir: str, record: SelectionRecord) -> None:
    """Append the section to the card the trainer wrote in `output_dir` (nothing when it wrote none)."""
    path = os.path.join(output_dir, "README.md")
    if os.path.exists(path):
        with open(path, "a", encoding="utf-8") as card:
            card.write("\n" + selection_section(record))
