"""Scoring for the benchmarks.

Multiple choice: each choice is scored by the summed log-likelihood of its tokens given the prompt, where the choice's
tokens are `tokenizer(prompt + choice).input_ids[len(tokenizer(prompt).input_ids):]`. The fast path runs each prompt
once and scores every choice from its KV cache; the reference path runs every prompt + choice in full and is kept to
check the fast one. Generative: greedy decoding and exact match.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import replace

import torch
from transformers import DynamicCache


@contextmanager
def _inference(model):
    """Eval mode (no dropout) without gradients, restoring train mode afterwards: scoring runs between epochs."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield next(model.parameters()).device
    finally:
        if was_training:
            model.train()


def _pad_id(tokenizer) -> int:
    """Any id will do for padding (it is masked out); not every tokenizer defines a pad token."""
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return token_id
    return 0


def _pad(sequences, pad_id, left: bool):
    """Stack token lists into (ids, attention mask), padded on the left or on the right."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        span = slice(width - len(seq), width) if left else slice(0, len(seq))
        ids[row, span] = torch.tensor(seq, dtype=torch.long)
        mask[row, span] = 1
    return ids, mask


def _sequence_logprobs(model, tokenizer, pairs, batch_size, device) -> list[tuple[float, int]]:
    """(summed log-likelihood, token count) of each (prompt, choice): the straightforward path, one full forward pass
    over prompt + choice per pair. Exact whatever the tokenisation does at the prompt/choice boundary."""
    seqs = [(tokenizer(prompt + choice)["input_ids"], len(tokenizer(prompt)["input_ids"])) for prompt, choice in pairs]
    results = []
    for start in range(0, len(seqs), batch_size):
        chunk = seqs[start : start + batch_size]
        input_ids, attention = _pad([ids for ids, _ in chunk], _pad_id(tokenizer), left=False)
        input_ids = input_ids.to(device)
        logits = model(input_ids=input_ids, attention_mask=attention.to(device)).logits.float()
        logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
        token_lp = logprobs.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1).cpu()
        for row, (ids, n_prompt) in enumerate(chunk):
            lp = token_lp[row, n_prompt - 1 : len(ids) - 1]
            results.append((float(lp.sum()), len(lp)))
    return results


def _continuations(tokenizer, example):
    """The prompt's ids and each choice's continuation ids, or None for the continuations when the joint tokenisation
    does not start with the prompt's ids (or a choice adds no token): such an example cannot reuse the prompt's cache
    and is scored by the reference path instead."""
    prompt_ids = tokenizer(example.prompt)["input_ids"]
    continuations = []
    for choice in example.choices:
        ids = tokenizer(example.prompt + choice)["input_ids"]
        if ids[: len(prompt_ids)] != prompt_ids or len(ids) == len(prompt_ids):
            return prompt_ids, None
        continuations.append(ids[len(prompt_ids) :])
    return prompt_ids, continuations


def choice_logprobs_reference(model, tokenizer, examples, batch_size: int = 32) -> list[list[tuple[float, int]]]:
    """Per example, per choice: (summed log-likelihood of the choice's tokens, their count), one full forward pass per
    prompt + choice. Slow (every prompt is run once per choice); kept as the ground truth for `choice_logprobs`."""
    pairs = [(e.prompt, c) for e in examples for c in e.choices]
    with _inference(model) as device:
        flat = iter(_sequence_logprobs(model, tokenizer, pairs, batch_size, device))
    return [[next(flat) for _ in e.choices] for e in examples]


def choice_logprobs(model, tokenizer, examples, batch_size: int = 32) -> list[list[tuple[float, int]]]:
    """Same result as `choice_logprobs_reference`, running each prompt once.

    Up to `batch_size` prompts go through the model together, left-padded with explicit position ids, keeping the KV
    cache; the first token of every choice is scored from its prompt's last position. Then the choices, up to
    `batch_size` rows at a time (so memory stays bounded with many choices), are right-padded and run on a copy of
    their prompt's cache rows, with attention mask [prompt mask, choice mask] and positions continuing the prompt's
    (all but their last token, which is only a target: single-token choices need no second pass).
    """
    encoded = [_continuations(tokenizer, e) for e in examples]
    results = [None] * len(examples)
    pad_id = _pad_id(tokenizer)
    with _inference(model) as device:
        fallback = [i for i, (_, conts) in enumerate(encoded) if conts is None]
        pairs = [(examples[i].prompt, c) for i in fallback for c in examples[i].choices]
        flat = iter(_sequence_logprobs(model, tokenizer, pairs, batch_size, device))
        for i in fallback:
            results[i] = [next(flat) for _ in examples[i].choices]

        fast = [i for i, (_, conts) in enumerate(encoded) if conts is not None]
        for start in range(0, len(fast), batch_size):
            group = fast[start : start + batch_size]
            prompt_ids, prompt_mask = _pad([encoded[i][0] for i in group], pad_id, left=True)
            prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
            out = model(input_ids=prompt_ids, attention_mask=prompt_mask,
                        position_ids=(prompt_mask.cumsum(-1) - 1).clamp(min=0), use_cache=True, logits_to_keep=1)
            first_lp = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # next-token log-probs after each prompt
            cache = out.past_key_values
            rows = [(g, j, cont) for g, i in enumerate(group) for j, cont in enumerate(encoded[i][1])]
            # single-token choices first: their chunks need no second pass (and no copy of the cache)
            rows.sort(key=lambda row: len(row[2]) > 1)
            for row_start in range(0, len(rows), batch_size):
                chunk = rows[row_start : row_start + batch_size]
                src = torch.tensor([g for g, _, _ in chunk], device=device)
                targets, target_mask = _pad([cont for _, _, cont in chunk], pad_id, left=False)
                targets, target_mask = targets.to(device), target_mask.to(device)
                logprobs = first_lp[src].unsqueeze(1)
                if targets.shape[1] > 1:  # a choice's last token is only predicted, so it is not fed to the model
                    inputs, input_mask = targets[:, :-1], target_mask[:, :-1]
                    positions = prompt_mask[src].sum(-1, keepdim=True) + torch.arange(inputs.shape[1], device=device)
                    chunk_cache = DynamicCache([(keys[src], values[src]) for keys, values, *_ in cache])
                    logits = model(input_ids=inputs, attention_mask=torch.cat([prompt_mask[src], input_mask], -1),
                                   position_ids=positions, past_key_values=chunk_cache, use_cache=True).logits
                    logprobs = torch.cat([logprobs, torch.log_softmax(logits.float(), dim=-1)], 1)
                token_lp = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1) * target_mask
                for (g, j, cont), total in zip(chunk, token_lp.sum(-1).tolist()):
                    i = group[g]
                    if results[i] is None:
                        results[i] = [None] * len(examples[i].choices)
                    results[i][j] = (total, len(cont))
    return results


def _summary(examples, logprobs) -> dict:
    """Accuracy (argmax of the summed log-likelihoods) and answer_loss (mean over examples of the correct choice's
    per-token negative log-likelihood)."""
    correct, losses = 0, []
    for example, scores in zip(examples, logprobs):
        sums = [total for total, _ in scores]
        correct += int(max(range(len(sums)), key=sums.__getitem__) == example.answer)
        total, count = scores[example.answer]
        losses.append(-total / max(1, count))
    n = len(examples)
    acc = correct / n
    return {"accuracy": acc, "accuracy_stderr": math.sqrt(acc * (1 - acc) / n), "answer_loss": sum(losses) / n,
            "n_test": n}


def score_multiple_choice(model, tokenizer, examples, batch_size: int = 32) -> dict:
    """Accuracy (argmax of the summed log-likelihood of the choice tokens), its binomial stderr, and the held-out loss
    of the correct answer: mean over examples of the per-token negative log-likelihood of the correct choice's
    tokens."""
    return _summary(examples, choice_logprobs(model, tokenizer, examples, batch_size))


def score_multiple_choice_reference(model, tokenizer, examples, batch_size: int = 32) -> dict:
    """`score_multiple_choice` by the slow reference path (for checking)."""
    return _summary(examples, choice_logprobs_reference(model, tokenizer, examples, batch_size))


def answer_losses(model, tokenizer, examples, batch_size: int = 32) -> list[float]:
    """Each example's correct-choice per-token negative log-likelihood, scoring only that choice: cheap enough to run
    after every epoch for a held-out loss curve, and per example so that a rise can be told from noise (paired)."""
    answers_only = [replace(e, choices=[e.choices[e.answer]], answer=0) for e in examples]
    scores = choice_logprobs(model, tokenizer, answers_only, batch_size)
    return [-total / max(1, count) for (total, count), in scores]


def answer_loss(model, tokenizer, examples, batch_size: int = 32) -> float:
    """Mean of `answer_losses`."""
    losses = answer_losses(model, tokenizer, examples, batch_size)
    return sum(losses) / len(losses)


def exact_match(model, tokenizer, prompts, references, max_new_tokens: int = 32, batch_size: int = 32) -> dict:
    """Greedy generation from each prompt (already rendered by the chat template, so no special tokens are added),
    stopping at the tokenizer's eos (the end-of-turn token for chat models such as SmolLM2); a hit when the decoded
    answer equals the reference after stripping whitespace. Returns the fraction, n_test and three samples."""
    generated = []
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation appends after the last column, so prompts must end there
    try:
        with _inference(model) as device:
            for start in range(0, len(prompts), batch_size):
                batch = tokenizer(prompts[start : start + batch_size], return_tensors="pt", padding=True,
                                  add_special_tokens=False).to(device)
                out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                     eos_token_id=tokenizer.eos_token_id, pad_token_id=_pad_id(tokenizer))
                new_tokens = out[:, batch["input_ids"].shape[1] :]
                generated += tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    finally:
        tokenizer.padding_side = padding_side
    hits = [g.strip() == r.strip() for g, r in zip(generated, references)]
    samples = [{"prompt_tail": p[-80:], "generated": g, "reference": r}
               for p, g, r in zip(prompts[:3], generated, references)]
    return {"exact_match": sum(hits) / len(hits), "n_test": len(hits), "samples": samples}


def evaluate_task(model, tokenizer, task, generated_examples: int = 100) -> dict:
    """A task's held-out figures: accuracy and answer loss for multiple choice; for the generative task, the reference
    answer's loss on every test example and the exact match of greedy answers (reported as `accuracy`, with `metric`
    saying so) on the first `generated_examples` (generation costs several times a scoring pass on a CPU)."""
    scores = score_multiple_choice(model, tokenizer, task.test)
    if not task.generative:
        return scores
    test = task.test[:generated_examples]
    matched = exact_match(model, tokenizer, [e.prompt for e in test], [e.messages[1]["content"] for e in test])
    return {"accuracy": matched["exact_match"], "answer_loss": scores["answer_loss"], "n_test": matched["n_test"],
            "metric": "exact_match", "samples": matched["samples"]}
