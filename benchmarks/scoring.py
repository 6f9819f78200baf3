"""Multiple-choice scoring by summed log-likelihood of each choice's tokens given the prompt."""

from __future__ import annotations

import math

import torch


@torch.no_grad()
def score_multiple_choice(model, tokenizer, examples, batch_size: int = 32) -> dict:
    """Accuracy (argmax of the summed log-likelihood of the choice tokens), and the held-out loss of the correct
    answer: mean over examples of the per-token negative log-likelihood of the correct choice's tokens."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    seqs = []  # (example index, choice index, token ids, number of prompt tokens)
    for i, example in enumerate(examples):
        n_prompt = len(tokenizer(example.prompt)["input_ids"])
        for j, choice in enumerate(example.choices):
            ids = tokenizer(example.prompt + choice)["input_ids"]
            seqs.append((i, j, ids, n_prompt))
    sums = {}
    counts = {}
    pad = tokenizer.pad_token_id
    for start in range(0, len(seqs), batch_size):
        chunk = seqs[start : start + batch_size]
        width = max(len(s[2]) for s in chunk)
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, (_, _, ids, _) in enumerate(chunk):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention[row, : len(ids)] = 1
        logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits.float()
        logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
        targets = input_ids[:, 1:].to(device)
        token_lp = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1).cpu()
        for row, (i, j, ids, n_prompt) in enumerate(chunk):
            lp = token_lp[row, n_prompt - 1 : len(ids) - 1]
            sums[i, j] = float(lp.sum())
            counts[i, j] = len(lp)
    correct, losses = 0, []
    for i, example in enumerate(examples):
        scores = [sums[i, j] for j in range(len(example.choices))]
        correct += int(max(range(len(scores)), key=scores.__getitem__) == example.answer)
        losses.append(-sums[i, example.answer] / max(1, counts[i, example.answer]))
    if was_training:
        model.train()
    n = len(examples)
    acc = correct / n
    return {"accuracy": acc, "accuracy_stderr": math.sqrt(acc * (1 - acc) / n), "answer_loss": sum(losses) / n,
            "n_test": n}
