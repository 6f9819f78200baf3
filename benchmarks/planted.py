"""Planted-layer recovery: a teacher with a known LoRA delta on some blocks writes the training data."""

from __future__ import annotations

import torch


@torch.no_grad()
def _generate(model, tokenizer, prompts, max_new_tokens, batch_size=32):
    tokenizer.padding_side = "left"
    outputs = []
    try:
        for start in range(0, len(prompts), batch_size):
            batch = tokenizer(prompts[start : start + batch_size], return_tensors="pt", padding=True)
            generated = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                       pad_token_id=tokenizer.pad_token_id)
            outputs += tokenizer.batch_decode(generated[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = "right"
    return outputs


def teacher_rows(base, tokenizer, prompts, planted_blocks, lora, b_std=0.4, max_new_tokens=10, seed=0):
    """Prompt-completion rows whose completions are the teacher's greedy answers (teacher = base + a random LoRA
    delta, `lora_B ~ N(0, b_std)`, on `planted_blocks` only)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    teacher = get_peft_model(base, LoraConfig(**lora, layers_to_transform=planted_blocks, layers_pattern="layers"))
    for name, param in teacher.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0.0, b_std)
    teacher.eval()
    answers = _generate(teacher, tokenizer, prompts, max_new_tokens)
    probe = prompts[:64]
    with teacher.disable_adapter():
        base_answers = _generate(teacher, tokenizer, probe, max_new_tokens)
    differs = sum(a != b for a, b in zip(answers[: len(probe)], base_answers)) / len(probe)
    rows = [{"prompt": p, "completion": a if a.strip() else " ..."} for p, a in zip(prompts, answers)]
    return rows, {"b_std": b_std, "max_new_tokens": max_new_tokens, "n_rows": len(rows),
                  "fraction_answers_differing_from_base": round(differs, 3), "example": rows[0]}
