"""The user's LoRA on the chosen blocks: the search runs plain LoRA of the same shape, the fine-tune builds exactly the
user's `LoraConfig` (DoRA, rsLoRA, PiSSA/OLoRA and Gaussian inits) on the selected blocks, and the saved adapter
carries the variant and `layers_to_transform`."""

import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from tiny import flexora_trainer, lora_config

INPUT = torch.tensor([[5, 17, 42, 99, 7, 123, 64, 3]])
VARIANTS = {
    "dora": dict(use_dora=True),
    "rslora": dict(use_rslora=True),
    "gaussian": dict(init_lora_weights="gaussian"),
    "pissa": dict(init_lora_weights="pissa"),
    "olora": dict(init_lora_weights="olora"),
}


def logits(model):
    model.eval()
    with torch.no_grad():
        return model(INPUT).logits


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_the_fine_tune_builds_the_users_lora_on_the_selected_blocks(variant, tiny_llama_dir, chat_examples, tmp_path):
    settings = VARIANTS[variant]
    # The fine-tune's learning rate is 0, so after train() its LoRA is still at its init: every variant's init gives
    # back the original model's function only if the search gave back the original base weights (PiSSA and OLoRA
    # rewrite them) and the fine-tune's adapter is built as PEFT builds it.
    trainer = flexora_trainer(tiny_llama_dir, tmp_path / "out", chat_examples, peft_config=lora_config(**settings),
                              learning_rate=0.0, search_learning_rate=1e-2, max_steps=2, selection_rule="top_k",
                              selection_top_k=2)
    trainer.train()
    trainer.save_model()
    selected = trainer.flexora_record.selected_layers
    original = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    assert torch.allclose(logits(trainer.model), logits(original), atol=1e-4)

    config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert config["layers_to_transform"] == selected and config["layers_pattern"] == "layers"
    for key, value in settings.items():
        assert config[key] == value
    assert list(trainer.model.peft_config) == ["default"]  # the search's adapter is gone
    assert trainer.flexora_record.lora_params_selected * 4 == trainer.flexora_record.lora_params_all_blocks * 2
    if variant == "dora":
        magnitudes = [n for n, p in trainer.model.named_parameters() if "lora_magnitude_vector" in n]
        assert {trainer.flexora_blocks.block_of(n) for n in magnitudes} == set(selected)
    if variant not in ("pissa", "olora"):  # these adapters need their residual base (PEFT's own conversion)
        reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), tmp_path / "out")
        assert torch.allclose(logits(reloaded), logits(trainer.model), atol=1e-5)


def test_the_search_runs_plain_lora_whatever_the_users_variant(tiny_llama_dir, chat_examples, tmp_path):
    peft_config = lora_config(use_dora=True, init_lora_weights="gaussian")
    trainer = flexora_trainer(tiny_llama_dir, tmp_path, chat_examples, peft_config=peft_config)
    (config,) = trainer.model.peft_config.values()
    assert not config.use_dora and config.init_lora_weights is True and config.r == 4 and config.lora_alpha == 8
    assert not any("lora_magnitude_vector" in n for n, _ in trainer.model.named_parameters())


def test_warm_start_needs_a_plain_lora(tiny_llama_dir, chat_examples, tmp_path):
    with pytest.raises(ValueError, match="search_warm_start.*plain"):
        flexora_trainer(tiny_llama_dir, tmp_path, chat_examples, peft_config=lora_config(use_dora=True),
                        search_warm_start=True)


def test_a_base_changing_init_on_a_quantized_base_is_refused(tiny_llama_dir, chat_examples, tmp_path):
    """OLoRA on a 4-bit base (PEFT refuses PiSSA there itself): the search could not give the original weights
    back, so the trainer refuses it before any training."""
    pytest.importorskip("bitsandbytes")
    from transformers import BitsAndBytesConfig

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, quantization_config=BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32))
    with pytest.raises(ValueError, match="init_lora_weights='olora'.*quantized base"):
        flexora_trainer(tiny_llama_dir, tmp_path / "out", chat_examples, model=model,
                        peft_config=lora_config(init_lora_weights="olora"))
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
