"""Planted-layer recovery: a teacher with a known LoRA delta on some blocks writes the training data, or the base
writes it for a student damaged on some blocks."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
from pathlib import Path

import torch

from flexora_trl.smollm2 import cache_root

from .run import write_json

SAMPLED_MAX_LENGTH = 128  # prompts of up to ~80 tokens and 48 sampled ones
# the base writes the rows; the student is the base damaged (`Damage`)
REPAIR_DESIGNS = ("repair", "balanced", "balanced_rows")
SIZING_ROWS = 64  # `balanced_rows`: the rows its damage is sized on (about 1,200 answer tokens on SmolLM2)
BALANCE_TOLERANCE = 0.25  # `balanced_rows`: how far a block's marginal KL may be off its share


def planted_rows(design, base, tokenizer, prompts, planted_blocks, lora, targets, seed, target_kl=0.1):
    """The training rows, the teacher's description, the max_length they need (None: the caller's default) and the
    student (a function turning a freshly loaded base into the model the search and the oracle train) for a design
    (`greedy`, `sampled`, `principal`, `repair`, `balanced` or `balanced_rows`; see `benchmarks.run --help`): the
    benchmark's planted job and the oracle build their teachers here."""
    if design in REPAIR_DESIGNS:
        rows, teacher, damage = repair_rows(base, tokenizer, prompts, planted_blocks, lora["target_modules"],
                                            target_kl, seed, sizing=design,
                                            rows_cache=cache_root() / "planted-rows")
        return rows, teacher, SAMPLED_MAX_LENGTH, damage
    if design == "greedy":
        b_std = 0.4 if targets == "qv" else 0.2  # seven modules per block: a smaller delta changes as much
        rows, teacher = teacher_rows(base, tokenizer, prompts, planted_blocks, lora, b_std=b_std, seed=seed)
        return rows, teacher, None, _unchanged
    rows, teacher = sampled_teacher_rows(base, tokenizer, prompts, planted_blocks, lora, target_kl=target_kl,
                                         seed=seed, principal=design == "principal")
    return rows, teacher, SAMPLED_MAX_LENGTH, _unchanged


def _unchanged(model):
    return model


def _generated(model, tokenizer, prompts, max_new_tokens, batch_size=32, **sampling):
    """Per batch of prompts (left-padded, as `generate` needs): the tokenized batch and the generated tokens after it
    (greedy, or sampled with `sampling` passed on to `generate`)."""
    tokenizer.padding_side = "left"
    try:
        for start in range(0, len(prompts), batch_size):
            batch = tokenizer(prompts[start : start + batch_size], return_tensors="pt", padding=True)
            with torch.no_grad():
                generated = model.generate(**batch, max_new_tokens=max_new_tokens,
                                           pad_token_id=tokenizer.pad_token_id, **(sampling or {"do_sample": False}))
            yield batch, generated[:, batch["input_ids"].shape[1] :]
    finally:
        tokenizer.padding_side = "right"


def _generate(model, tokenizer, prompts, max_new_tokens):
    """Greedy continuations of the prompts, as text."""
    return [text for _, new in _generated(model, tokenizer, prompts, max_new_tokens)
            for text in tokenizer.batch_decode(new, skip_special_tokens=True)]


def sampled_rows(model, tokenizer, prompts, max_new_tokens, seed):
    """Pretokenized rows (`input_ids`, `completion_mask`) of the model's continuations sampled at temperature 1, as
    it wrote them: with its end-of-sequence token where it stopped and none where `max_new_tokens` cut it.

    Text rows would not do: TRL ends every completion with EOS, teaching "stop here" where the model did not, and an
    empty answer needed a placeholder. Both are formats any block learns (later ones faster), and they swamped the
    planted change: SmolLM2 stops at once on about 2 in 3 of the planted prompts (22 of 32 in a probe)."""
    stops = model.generation_config.eos_token_id or tokenizer.eos_token_id
    stops = set(stops if isinstance(stops, list) else [stops])
    torch.manual_seed(seed)
    rows = []
    for batch, new in _generated(model, tokenizer, prompts, max_new_tokens, do_sample=True, temperature=1.0,
                                 top_k=0, top_p=1.0):
        for ids, mask, answer in zip(batch["input_ids"].tolist(), batch["attention_mask"].tolist(), new.tolist()):
            prompt = [token for token, real in zip(ids, mask) if real]
            end = next((i for i, token in enumerate(answer) if token in stops), None)
            answer = answer if end is None else answer[: end + 1]
            rows.append({"input_ids": prompt + answer, "completion_mask": [0] * len(prompt) + [1] * len(answer)})
    return rows


def _rows(prompts, answers):
    """Prompt-completion rows; an empty answer becomes a placeholder, so that every row has a token to train on."""
    return [{"prompt": p, "completion": a if a.strip() else " ..."} for p, a in zip(prompts, answers)]


def teacher_rows(base, tokenizer, prompts, planted_blocks, lora, b_std=0.4, max_new_tokens=10, seed=0):
    """Prompt-completion rows whose completions are the teacher's greedy answers (teacher = base + a random LoRA
    delta, `lora_B ~ N(0, b_std)`, on `planted_blocks` only)."""
    teacher = _planted_teacher(base, planted_blocks, lora, b_std, seed)
    answers = _generate(teacher, tokenizer, prompts, max_new_tokens)
    probe = prompts[:64]
    with teacher.disable_adapter():
        base_answers = _generate(teacher, tokenizer, probe, max_new_tokens)
    differs = sum(a != b for a, b in zip(answers[: len(probe)], base_answers)) / len(probe)
    rows = _rows(prompts, answers)
    return rows, {"b_std": b_std, "max_new_tokens": max_new_tokens, "n_rows": len(rows),
                  "fraction_answers_differing_from_base": round(differs, 3), "example": rows[0]}


def _planted_teacher(base, planted_blocks, lora, b_std, seed):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    teacher = get_peft_model(base, LoraConfig(**lora, layers_to_transform=planted_blocks, layers_pattern="layers"))
    for name, param in teacher.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0.0, b_std)
    return teacher.eval()


@torch.no_grad()
def _answer_kl(teacher, tokenizer, prompts, answers, student=None):
    """Mean per-token KL(teacher || student) of the next-token distributions where answers are written: from each
    prompt's last position through its answer (a delta can leave the prompts' own positions alone and still change
    how the model answers, e.g. not at all). No `student`: the base, i.e. the teacher with its adapter disabled."""
    tokenizer.padding_side = "right"
    batch = tokenizer([p + a for p, a in zip(prompts, answers)], return_tensors="pt", padding=True)
    log_t = torch.log_softmax(teacher(**batch).logits.float(), -1)
    with teacher.disable_adapter() if student is None else contextlib.nullcontext():
        log_b = torch.log_softmax((student or teacher)(**batch).logits.float(), -1)
    kl = (log_t.exp() * (log_t - log_b)).sum(-1)
    mask = batch["attention_mask"].bool()
    for row, prompt in enumerate(prompts):
        mask[row, : len(tokenizer(prompt)["input_ids"]) - 1] = False
    return float(kl[mask].mean())


@torch.no_grad()
def _align_inputs_with_activations(teacher, tokenizer, prompts):
    """Set every planted `lora_A` to the top principal directions of its module's inputs over the prompts (unit rows):
    the delta then acts where the activations live, as fine-tuning updates do, instead of on random directions that
    the inputs barely reach (a change there is small and diffuse, and any block can imitate it)."""
    modules = {name: m for name, m in teacher.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A}
    covariances, hooks = {}, []
    for name, module in modules.items():
        def hook(mod, args, name=name):
            x = args[0].reshape(-1, args[0].shape[-1]).float()
            covariances[name] = covariances.get(name, 0) + x.T @ x
        hooks.append(module.register_forward_pre_hook(hook))
    tokenizer.padding_side = "right"
    try:
        with teacher.disable_adapter():
            for start in range(0, len(prompts), 32):
                teacher(**tokenizer(prompts[start : start + 32], return_tensors="pt", padding=True))
    finally:
        for handle in hooks:
            handle.remove()
    for name, module in modules.items():
        weight = module.lora_A["default"].weight
        _, vectors = torch.linalg.eigh(covariances[name])
        weight.copy_(vectors[:, -weight.shape[0] :].T.flip(0))


def sampled_teacher_rows(base, tokenizer, prompts, planted_blocks, lora, target_kl=0.1, max_new_tokens=48,
                         seed=0, principal=False):
    """A planted design meant to be identifiable: the delta is sized by a fixed rule (its per-token KL from the base
    where answers are written is `target_kl`, whatever the set), and the teacher *samples* long continuations, so
    the data carry its whole next-token distribution rather than a short greedy answer whose change any block can
    learn as a format.
    `principal` puts the delta on the inputs' principal directions (see `_align_inputs_with_activations`)."""
    teacher = _planted_teacher(base, planted_blocks, lora, 1.0, seed)
    if principal:
        _align_inputs_with_activations(teacher, tokenizer, prompts[:64])
    probe = prompts[:32]
    with teacher.disable_adapter():
        probe_answers = _generate(teacher, tokenizer, probe, 16)  # the base's own answers: where the KL is measured
    scale = 1.0
    for _ in range(5):  # KL grows about as the square of a small delta's scale
        kl = _answer_kl(teacher, tokenizer, probe, probe_answers)
        factor = (target_kl / kl) ** 0.5
        scale *= factor
        for name, param in teacher.named_parameters():
            if "lora_B" in name:
                param.data.mul_(factor)
    measured = _answer_kl(teacher, tokenizer, probe, probe_answers)
    rows = sampled_rows(teacher, tokenizer, prompts, max_new_tokens, seed)
    return rows, {"design": "sampled", "principal": principal, "target_kl": target_kl,
                  "measured_kl": round(measured, 4), "b_std": round(scale, 5), "max_new_tokens": max_new_tokens,
                  **_describe(rows, tokenizer, max_new_tokens)}


REPAIR_RANK = 4  # below the benchmark's LoRA rank (8): a planted block's LoRA can undo its damage exactly
MOST_FRACTION = 2.0  # `balanced_rows`: past 1 the part's directions turn negative (at 2, mirrored): set 15's block
# 24 needs more than its whole part (0.009 of a 0.0167 share); still rank REPAIR_RANK, still undone exactly


def target_modules_by_block(model, target_modules):
    """(name, block, module) of every target module in the model's blocks (`layers.N`)."""
    for name, module in model.named_modules():
        if ".layers." in name and name.rsplit(".", 1)[-1] in target_modules:
            yield name, int(name.split(".layers.")[1].split(".")[0]), module


def _planted_modules(model, planted_blocks, target_modules):
    """(name, block, module) of every target module in the planted blocks."""
    return ((name, block, module) for name, block, module in target_modules_by_block(model, target_modules)
            if block in planted_blocks)


class Damage:
    """The repair design's student: in every target module of a planted block, the weight's top REPAIR_RANK singular
    directions shrunk by that block's fraction (`fractions`; past 1 they turn negative). A change the base's own
    training put there (not a random direction, which any later block imitates), of a rank the planted block's LoRA
    can undo exactly and no other block can."""

    def __init__(self, base, planted_blocks, target_modules):
        self.planted_blocks, self.target_modules = planted_blocks, target_modules
        self.fractions = {block: 0.0 for block in planted_blocks}
        self.parts = {}
        for name, _, module in _planted_modules(base, planted_blocks, target_modules):
            u, s, vh = torch.linalg.svd(module.weight.detach().float(), full_matrices=False)
            self.parts[name] = (u[:, :REPAIR_RANK] * s[:REPAIR_RANK]) @ vh[:REPAIR_RANK]

    @torch.no_grad()
    def __call__(self, model, fractions=None):
        """Damage a freshly loaded base in place (and return it); `fractions` (block: fraction) instead of the sized
        ones, e.g. one block alone."""
        fractions = self.fractions if fractions is None else fractions
        for name, block, module in _planted_modules(model, self.planted_blocks, self.target_modules):
            module.weight.sub_((fractions.get(block, 0.0) * self.parts[name]).to(module.weight.dtype))
        return model


def _cached(cache, key, compute, keep=lambda value: True):
    """`compute()`, kept as JSON in the directory `cache` (if given) under a hash of `key`, and read back from there
    by the next job that asks with the same key, unless `keep` rejects what is there (then computed again)."""
    if cache is None:
        return compute()
    path = Path(cache) / f"{hashlib.sha256(json.dumps(key).encode()).hexdigest()[:20]}.json"
    if path.exists():
        value = json.loads(path.read_text())
        if keep(value):
            return value
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, value)
    return value


def base_rows(base, tokenizer, prompts, max_new_tokens, seed, cache=None):
    """`sampled_rows` of the unchanged base, kept in the directory `cache` if given: they depend on the model, the
    prompts and the seed only (not on the set's blocks, targets or design), and writing 1,024 of them takes about 10
    minutes on one core."""
    return _cached(cache, [base.name_or_path, prompts, max_new_tokens, seed],
                   lambda: sampled_rows(base, tokenizer, prompts, max_new_tokens, seed))


def _sized_fraction(kl_at, target_kl):
    """The fraction of the top-rank part whose KL is `target_kl` (at most the whole part)."""
    fraction = 0.5
    for _ in range(6):  # KL grows about as the square of a small damage
        fraction = min(1.0, fraction * (target_kl / max(kl_at(fraction), 1e-9)) ** 0.5)
    return fraction


def repair_rows(base, tokenizer, prompts, planted_blocks, target_modules, target_kl=0.1, seed=0, max_new_tokens=48,
                sizing="repair", rows_cache=None):
    """The repair designs: the teacher is the base itself, sampling long continuations; the student is the base with
    its planted blocks damaged (`Damage`). The student's LoRA learns the data best where the damage is.
    `sizing` says how much of each block's part is taken:
    - `repair`: one fraction for all, whose KL from the base on a probe (greedy answers to 32 prompts) is `target_kl`.
      That leaves the blocks unequally planted: one block alone can move the answers more than the six together
      (KL 0.26 of 0.12 on set 6, q,v) while another barely moves them (0.008).
    - `balanced`: each block's fraction sized alone to an equal share on the same probe, `target_kl` / the number of
      planted blocks. Measured on the rows the search learns from, the shares were not equal (all linear: one block's
      damage undone alone worth 0.003 to 0.054 nats a token on set 12, -0.001 to 0.049 on set 13): the probe's greedy
      answers are not where the rows are written, and a block's damage partly overlaps the others'.
    - `balanced_rows`: each block's marginal KL (what the damage of all adds over the damage of all but it: what its
      repair alone gives back) made an equal share, measured on `SIZING_ROWS` of the sampled rows themselves.
    The record gives each block's figure either way."""
    damage = Damage(base, planted_blocks, target_modules)
    rows = base_rows(base, tokenizer, prompts, max_new_tokens, seed, rows_cache)
    if sizing == "balanced_rows":
        key = ["damage-rows", base.name_or_path, prompts, seed, list(planted_blocks), list(target_modules), target_kl,
               REPAIR_RANK, SIZING_ROWS]
        share = target_kl / len(planted_blocks)
        sized = _cached(rows_cache, key,
                        lambda: _size_marginals(base, tokenizer, rows[-SIZING_ROWS:], damage, target_kl),
                        keep=lambda v: _balanced(v["marginal_kl"], share))
        if not _balanced(sized["marginal_kl"], share):
            raise ValueError(f"balanced_rows: planted blocks {list(planted_blocks)} cannot each be given a marginal KL "
                             f"of {share:.4f} (within {BALANCE_TOLERANCE:.0%}): measured {sized['marginal_kl']} at "
                             f"fractions {sized['fractions']}; draw another set or lower --target-kl")
    else:
        probe = prompts[:32]
        key = ["damage", base.name_or_path, probe, list(planted_blocks), list(target_modules), target_kl,
               sizing == "balanced", REPAIR_RANK]
        sized = _cached(rows_cache, key, lambda: _size_damage(base, tokenizer, probe, damage, target_kl,
                                                              sizing == "balanced"))
    damage.fractions = {int(block): f for block, f in sized.pop("fractions").items()}
    teacher = {"design": sizing, "rank": REPAIR_RANK,
               "fractions": {block: round(f, 5) for block, f in damage.fractions.items()}, "target_kl": target_kl,
               **{name: {int(b): v for b, v in value.items()} if isinstance(value, dict) else value
                  for name, value in sized.items()},
               "max_new_tokens": max_new_tokens, **_describe(rows, tokenizer, max_new_tokens)}
    return rows, teacher, damage


def _size_damage(base, tokenizer, probe, damage, target_kl, balanced) -> dict:
    """The damage's fractions (see `repair_rows`), each planted block's KL alone and the KL of all together, on the
    base's 16-token answers to the probe prompts: 40-odd KL measurements of the whole model, which a second job on
    the same set, targets and design reads from the cache instead."""
    probe_answers = _generate(base, tokenizer, probe, 16)

    def kl_of(fractions):
        return _answer_kl(base, tokenizer, probe, probe_answers, student=damage(copy.deepcopy(base), fractions))

    blocks = damage.planted_blocks
    if balanced:
        share = target_kl / len(blocks)
        fractions = {block: _sized_fraction(lambda f, block=block: kl_of({block: f}), share) for block in blocks}
    else:
        fractions = dict.fromkeys(blocks, _sized_fraction(lambda f: kl_of(dict.fromkeys(blocks, f)), target_kl))
    return {"fractions": fractions, "kl_alone": {block: round(kl_of({block: fractions[block]}), 4) for block in blocks},
            "measured_kl": round(kl_of(fractions), 4)}


class RowsKL:
    """KL(base || student) per answer token of the rows, where the base wrote them: the base's log-probabilities at
    the answer positions are kept, so each student costs one forward pass."""

    def __init__(self, base, tokenizer, rows):
        from .oracle import batches

        self.batches = batches(tokenizer, rows, max_length=SAMPLED_MAX_LENGTH)
        self.base_logp = [self._answer_logp(base, batch) for batch in self.batches]

    @staticmethod
    @torch.no_grad()
    def _answer_logp(model, batch):
        answer = batch["labels"][:, 1:] != -100  # the position before each answer token predicts it
        return torch.log_softmax(model.eval()(**batch).logits[:, :-1][answer].float(), -1)

    def __call__(self, student) -> float:
        total = count = 0
        for batch, log_b in zip(self.batches, self.base_logp):
            log_s = self._answer_logp(student, batch)
            total += float((log_b.exp() * (log_b - log_s)).sum())
            count += len(log_b)
        return total / count


def _size_marginals(base, tokenizer, rows, damage, target_kl, rounds=5, most_rounds=15) -> dict:
    """`balanced_rows`: fractions whose marginal KLs on `rows` are each `target_kl` / the number of planted blocks.
    A block's marginal depends on the other blocks' damage as well as its own (set 14, q,v, neighbours 0/1 and 7/8: a
    rule scaling each fraction by the square root of its share over its marginal left them heavy in turn after
    fifteen rounds, and one marginal below zero), so each round is a quasi-Newton (Broyden) step on all the
    fractions at once: it starts from each marginal growing as the square of its own fraction and learns how they
    move together from each round's change; a step is held to 4x either way and to MOST_FRACTION. `rounds` rounds of
    1 + n KL measurements, and more (up to `most_rounds`) while a marginal is off its share by more than
    BALANCE_TOLERANCE."""
    kl = RowsKL(base, tokenizer, rows)

    def kl_of(fractions):
        return kl(damage(copy.deepcopy(base), fractions))

    def marginals(fractions):
        everything = kl_of(fractions)
        return everything, {b: everything - kl_of({o: f for o, f in fractions.items() if o != b}) for b in fractions}

    blocks = list(damage.planted_blocks)
    share = target_kl / len(blocks)
    fraction = torch.full((len(blocks),), 0.5, dtype=torch.float64)
    done, jacobian = 0, None
    while True:
        everything, marginal = marginals(dict(zip(blocks, fraction.tolist())))
        if done >= most_rounds or (done >= rounds and _balanced(marginal, share)):
            break
        now = torch.tensor([marginal[b] for b in blocks], dtype=torch.float64)
        if jacobian is None:
            jacobian = torch.diag(2 * now.clamp(min=share) / fraction)
        elif (moved := fraction - fraction_before) @ moved > 0:
            jacobian += torch.outer(now - before - jacobian @ moved, moved) / (moved @ moved)
        fraction_before, before = fraction, now
        step = torch.linalg.lstsq(jacobian, (share - now).unsqueeze(1)).solution.squeeze(1)
        fraction = torch.minimum(torch.maximum(fraction + step, fraction / 4), (4 * fraction).clamp(max=MOST_FRACTION))
        done += 1
    return {"fractions": dict(zip(blocks, fraction.tolist())),
            "marginal_kl": {b: round(m, 6) for b, m in marginal.items()}, "measured_kl": round(everything, 6),
            "sizing_rows": len(rows), "sizing_rounds": done}


def _balanced(marginal_kl: dict, share: float) -> bool:
    """Every planted block's marginal KL within BALANCE_TOLERANCE of its share."""
    return all(abs(m - share) <= BALANCE_TOLERANCE * share for m in marginal_kl.values())


def _describe(rows, tokenizer, max_new_tokens) -> dict:
    """What the sampled rows hold: how many, how many answers stopped at once or were cut, and the first one."""
    lengths = [sum(row["completion_mask"]) for row in rows]
    first = rows[0]
    return {"n_rows": len(rows), "answers_stopping_at_once": sum(n == 1 for n in lengths),
            "answers_cut_at_max_new_tokens": sum(n == max_new_tokens for n in lengths),
            "example": tokenizer.decode(first["input_ids"][len(first["input_ids"]) - lengths[0] :])}
