"""Map every LoRA module of a PeftModel to the transformer block (`layers.N`, `h.N`, ...) it lives in."""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

from peft.tuners.lora import LoraLayer

# The block-stack names PEFT itself recognises for `layers_to_transform` (Llama/Qwen2/Mistral/Gemma: `layers`,
# GPT-2: `h`, T5/BLOOM-style: `block`/`blocks`/`layer`).
BLOCK_CONTAINERS = ("layers", "h", "block", "blocks", "layer")
_BLOCK_RE = re.compile(rf"^(?P<stack>(?:.*?\.)?(?P<name>{'|'.join(BLOCK_CONTAINERS)}))\.(?P<index>\d+)\.")


@dataclass
class BlockMap:
    """The LoRA modules of a model grouped by block index, all in one block stack."""

    stack: str  # module path of the block ModuleList, e.g. "base_model.model.model.layers"
    pattern: str  # its last name, the `layers_pattern` PEFT understands, e.g. "layers"
    num_blocks: int  # blocks in the stack (with or without LoRA)
    modules: dict[int, list[tuple[str, LoraLayer]]]  # block index -> [(module name, LoRA layer)]

    @property
    def blocks(self) -> list[int]:
        """Blocks that carry LoRA, i.e. the candidates of the search."""
        return sorted(self.modules)

    def block_of(self, name: str) -> int | None:
        """The index of the block of this stack that a module or parameter name lies in, or None."""
        match = _BLOCK_RE.match(name)
        return int(match["index"]) if match is not None and match["stack"] == self.stack else None


def map_lora_blocks(model) -> BlockMap:
    """Group the LoRA layers of `model` by block; raise a clear error for any that sit outside a block stack."""
    modules: dict[int, list] = defaultdict(list)
    stacks, unmapped = set(), []
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        match = _BLOCK_RE.match(name)
        if match is None:
            unmapped.append(name)
            continue
        stacks.add((match["stack"], match["name"]))
        modules[int(match["index"])].append((name, module))
    if unmapped:
        raise ValueError(
            "Flexora gates one transformer block at a time, but these LoRA modules are not inside a block stack "
            f"named one of {BLOCK_CONTAINERS}: {unmapped[:5]}{' ...' if len(unmapped) > 5 else ''}. "
            "Restrict `target_modules` to modules inside the decoder blocks (e.g. ['q_proj', 'v_proj'])."
        )
    if not modules:
        raise ValueError("The model carries no LoRA modules: Flexora needs a LoRA adapter on the transformer blocks.")
    if len(stacks) > 1:
        raise ValueError(
            f"LoRA modules sit in more than one block stack ({sorted(s for s, _ in stacks)}); Flexora selects blocks "
            "of a single stack. Restrict `target_modules` (e.g. with a regex) to the language model's blocks."
        )
    (stack, pattern), = stacks
    num_blocks = len(model.get_submodule(stack))
    return BlockMap(stack=stack, pattern=pattern, num_blocks=num_blocks, modules=dict(modules))
