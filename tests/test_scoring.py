"""benchmarks/scoring.py on a tiny Llama: the cached multiple-choice path matches the full-sequence reference, and
exact match recognises the model's own greedy answers."""

import pytest
import torch
from tiny import build_model, build_tokenizer, lora_config

from benchmarks.scoring import (choice_logprobs, choice_logprobs_reference, exact_match, score_multiple_choice,
                                score_multiple_choice_reference)
from benchmarks.tasks import Example

EXAMPLES = [
    # single-token choices: at batch_size=2 they form a chunk of their own, scored from the prompt pass alone
    Example("bird\nAnswer:", [" a", " r"], 1),
    Example("reverse: red cat\nAnswer:", [" cat red", " red"], 0),
    Example("reverse: green blue moon tree river stone bird fish\nAnswer:", [" fish", " bird fish apple", " moon"], 2),
    Example("sun\nAnswer:", [" red", " green blue", " cat dog sun moon", " tree", " river stone", " bird", " fish"], 4),
    Example("reverse: apple bread milk\nAnswer:", [" milk bread apple", " snow rain wind fire"], 1),
    # the joint tokenisation merges across the boundary ("gre" + "en"): scored by the reference path
    Example("reverse: snow gre", ["en", "en blue"], 0),
]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module", params=["llama", "peft"])
def model(request, tokenizer):
    torch.set_num_threads(1)
    model = build_model(tokenizer)
    if request.param == "peft":
        from peft import get_peft_model

        model = get_peft_model(model, lora_config())
        torch.manual_seed(1)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.data.normal_(0, 0.5)  # peft starts B at zero, which would make the adapter a no-op
    return model


def test_boundary_merge_is_present(tokenizer):
    """The last example really exercises the fallback (otherwise the test would not cover it)."""
    example = EXAMPLES[-1]
    prompt_ids = tokenizer(example.prompt)["input_ids"]
    assert tokenizer(example.prompt + example.choices[0])["input_ids"][: len(prompt_ids)] != prompt_ids


@pytest.mark.parametrize("batch_size", [2, 32])
def test_fast_path_matches_reference(model, tokenizer, batch_size):
    model.train()
    fast = choice_logprobs(model, tokenizer, EXAMPLES, batch_size=batch_size)
    assert model.training
    reference = choice_logprobs_reference(model, tokenizer, EXAMPLES, batch_size=batch_size)
    for example, got, want in zip(EXAMPLES, fast, reference):
        assert len(got) == len(want) == len(example.choices)
        for (got_sum, got_count), (want_sum, want_count) in zip(got, want):
            assert got_count == want_count
            assert got_sum == pytest.approx(want_sum, abs=1e-4)
    summary = score_multiple_choice(model, tokenizer, EXAMPLES, batch_size=batch_size)
    expected = score_multiple_choice_reference(model, tokenizer, EXAMPLES, batch_size=batch_size)
    assert summary.keys() == expected.keys() == {"accuracy", "accuracy_stderr", "answer_loss", "n_test"}
    assert summary == pytest.approx(expected, abs=1e-5)


def test_answer_loss_matches_summary(model, tokenizer):
    from benchmarks.scoring import answer_loss

    expected = score_multiple_choice_reference(model, tokenizer, EXAMPLES)["answer_loss"]
    assert answer_loss(model, tokenizer, EXAMPLES, batch_size=2) == pytest.approx(expected, abs=1e-5)


def test_exact_match_on_own_greedy_outputs(model, tokenizer):
    messages = [[{"role": "user", "content": text}] for text in ["reverse: red cat", "reverse: sun moon tree river",
                                                                   "reverse: fish"]]
    prompts = [tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in messages]
    references = []
    with torch.no_grad():
        for prompt in prompts:  # one at a time, unpadded
            ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8,
                                 do_sample=False, eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.pad_token_id)
            references.append(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
    tokenizer.padding_side = "right"
    result = exact_match(model, tokenizer, prompts, references, max_new_tokens=8)
    assert tokenizer.padding_side == "right"
    assert result["exact_match"] == 1.0 and result["n_test"] == 3 and len(result["samples"]) == 3
    assert exact_match(model, tokenizer, prompts, ["x", "y", "z"], max_new_tokens=8)["exact_match"] == 0.0
