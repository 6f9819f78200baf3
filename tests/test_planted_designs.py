"""The benchmark's `repair` planted design: the student is the base damaged on the planted blocks only, by a change of
rank below the LoRA's (so the planted blocks' LoRA can undo it exactly), sized to a KL from the base."""

import copy
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from benchmarks.planted import REPAIR_RANK, Damage, base_rows, repair_rows

TARGETS = ["q_proj", "v_proj"]


def test_the_damage_is_low_rank_and_on_the_planted_blocks_only(tiny_llama_dir):
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    damage = Damage(base, [1, 3], TARGETS)
    damage.fractions = {1: 0.5, 3: 0.5}
    student = damage(copy.deepcopy(base))
    before, after = dict(base.named_parameters()), dict(student.named_parameters())
    changed = set()
    for name, weight in after.items():
        difference = (weight - before[name]).detach()
        if difference.abs().max() > 0:
            changed.add(name)
            assert torch.linalg.matrix_rank(difference) == REPAIR_RANK
            # what is taken away is half of the weight's top singular directions
            top = torch.linalg.svdvals(before[name].detach())[:REPAIR_RANK]
            torch.testing.assert_close(torch.linalg.svdvals(difference)[:REPAIR_RANK], 0.5 * top)
    assert changed == {f"model.layers.{block}.self_attn.{module}.weight" for block in (1, 3) for module in TARGETS}


def test_the_damage_is_sized_to_the_target_kl(tiny_llama_dir):
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    prompts = [f"Question {i}: how many {word} are there?" for i, word in enumerate(["cats", "dogs", "birds"] * 12)]
    # the tiny model is nearly uniform: removing the whole top-rank part moves it by about 0.006 nats a token
    rows, teacher, damage = repair_rows(base, tokenizer, prompts, [0, 2], TARGETS, target_kl=0.002, max_new_tokens=8)
    assert len(rows) == len(prompts)
    assert 0 < damage.fractions[0] == damage.fractions[2] < 1
    assert teacher["measured_kl"] == pytest.approx(0.002, rel=0.25)
    # the rows are what the base wrote: its end of sequence where it stopped, none where 8 new tokens cut it
    for row in rows:
        answer = [t for t, m in zip(row["input_ids"], row["completion_mask"]) if m]
        stopped = tokenizer.eos_token_id in answer
        assert (stopped and answer.index(tokenizer.eos_token_id) == len(answer) - 1) or len(answer) == 8
    assert teacher["answers_cut_at_max_new_tokens"] == sum(tokenizer.eos_token_id not in r["input_ids"] for r in rows)


def test_the_balanced_design_plants_every_block_equally(tiny_llama_dir):
    """One fraction for all planted blocks leaves some of them changing nothing; `balanced` sizes each alone to an
    equal share of the KL, so each block's damage alone moves the answers as much as any other's."""
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    prompts = [f"Question {i}: how many {word} are there?" for i, word in enumerate(["cats", "dogs", "birds"] * 12)]
    _, teacher, damage = repair_rows(base, tokenizer, prompts, [0, 2], TARGETS, target_kl=0.002, max_new_tokens=8,
                                     sizing="balanced")
    assert teacher["design"] == "balanced"
    assert teacher["kl_alone"][0] == pytest.approx(0.001, rel=0.25)
    assert teacher["kl_alone"][2] == pytest.approx(0.001, rel=0.25)
    assert damage.fractions[0] != damage.fractions[2]  # the two blocks need different parts to move it as much


def _answer_kl_on_rows(base, student, rows):
    """KL(base || student) per answer token, one row at a time (not the benchmark's batched `RowsKL`)."""
    total, count = 0.0, 0
    with torch.no_grad():
        for row in rows:
            ids = torch.tensor([row["input_ids"]])
            log_b, log_s = (torch.log_softmax(m(input_ids=ids).logits[0, :-1].float(), -1) for m in (base, student))
            answer = torch.tensor(row["completion_mask"][1:]).bool()
            total += float((log_b.exp() * (log_b - log_s)).sum(-1)[answer].sum())
            count += int(answer.sum())
    return total / count


def _balanced_rows(tiny_llama_dir, target_kl, repeats=12):
    """The base and `repair_rows`' (rows, teacher, damage) of blocks 0 and 2 on q,v, sized by `balanced_rows` on
    3 x `repeats` prompts."""
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    prompts = [f"Question {i}: how many {word} are there?"
               for i, word in enumerate(["cats", "dogs", "birds"] * repeats)]
    return base, repair_rows(base, tokenizer, prompts, [0, 2], TARGETS, target_kl=target_kl, max_new_tokens=8,
                             sizing="balanced_rows")


def test_balanced_rows_gives_every_block_an_equal_marginal_kl_on_the_rows(tiny_llama_dir):
    """`balanced_rows` sizes each block so that undoing its damage alone, the others' kept, gives back an equal share
    of the KL on the sampled rows themselves (not on a probe of greedy answers): checked here row by row, apart from
    the sizing's own batched measurement."""
    base, (rows, teacher, damage) = _balanced_rows(tiny_llama_dir, target_kl=0.002)
    assert teacher["design"] == "balanced_rows" and teacher["sizing_rows"] == len(rows)  # 36 rows: all of them
    everything = _answer_kl_on_rows(base, damage(copy.deepcopy(base)), rows)
    assert teacher["measured_kl"] == pytest.approx(everything, rel=1e-3)
    for block, other in ((0, 2), (2, 0)):
        without = _answer_kl_on_rows(base, damage(copy.deepcopy(base), {other: damage.fractions[other]}), rows)
        assert everything - without == pytest.approx(0.001, rel=0.25)
        assert teacher["marginal_kl"][block] == pytest.approx(everything - without, abs=1e-4)
    assert damage.fractions[0] != damage.fractions[2]


def test_balanced_rows_refuses_a_set_it_cannot_balance(tiny_llama_dir):
    """A share no fraction of the blocks' parts (up to MOST_FRACTION) can give ends in an error naming the blocks and
    the measured marginals, not in a record whose blocks are unequally planted (25 nats a token here)."""
    with pytest.raises(ValueError, match=r"planted blocks \[0, 2\] cannot each be given a marginal KL of 25"):
        _balanced_rows(tiny_llama_dir, target_kl=50.0, repeats=4)


def test_balanced_rows_takes_more_than_a_weak_blocks_whole_part(tiny_llama_dir):
    """A block whose whole part gives less than its share (set 15's block 24 on q,v: 0.009 of 0.0167) is given more:
    its part's directions turned negative, still of rank REPAIR_RANK. Here block 2's whole part, with block 0's at its
    share, gives about 0.0017 of a 0.0025 share."""
    base, (_, teacher, damage) = _balanced_rows(tiny_llama_dir, target_kl=0.005)
    assert damage.fractions[2] > 1.0
    assert all(m == pytest.approx(0.0025, rel=0.25) for m in teacher["marginal_kl"].values())
    weight = base.model.layers[2].self_attn.v_proj.weight.detach()
    difference = weight - damage(copy.deepcopy(base)).model.layers[2].self_attn.v_proj.weight.detach()
    assert torch.linalg.matrix_rank(difference) == REPAIR_RANK
    top = torch.linalg.svdvals(weight)[:REPAIR_RANK]
    torch.testing.assert_close(torch.linalg.svdvals(difference)[:REPAIR_RANK], damage.fractions[2] * top)


def test_the_bases_rows_are_kept_in_the_cache_and_read_back(tiny_llama_dir, tmp_path):
    """The base's sampled rows depend on the prompts and the seed only: a second planted job on them reads them."""
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    prompts = [f"Question {i}: how many cats are there?" for i in range(4)]
    written = base_rows(base, tokenizer, prompts, 8, seed=3, cache=tmp_path)
    assert len(list(tmp_path.glob("*.json"))) == 1
    assert base_rows(base, tokenizer, prompts, 8, seed=3, cache=tmp_path) == written
    assert base_rows(base, tokenizer, prompts, 8, seed=3) == written  # what the cache holds is what the seed writes
    base_rows(base, tokenizer, prompts, 8, seed=4, cache=tmp_path)
    assert len(list(tmp_path.glob("*.json"))) == 2


def test_the_damages_sizing_is_kept_in_the_cache_and_read_back(tiny_llama_dir, tmp_path):
    """The fractions and KLs depend on the set, targets and design only: a second job on them reads what the first
    measured (the cache file is what is used: an edited one changes the damage), and a new set measures its own."""
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    prompts = [f"Question {i}: how many {word} are there?" for i, word in enumerate(["cats", "dogs", "birds"] * 12)]
    sized = dict(target_kl=0.002, max_new_tokens=8, sizing="balanced")
    _, fresh, fresh_damage = repair_rows(base, tokenizer, prompts, [0, 2], TARGETS, **sized)
    _, first, _ = repair_rows(base, tokenizer, prompts, [0, 2], TARGETS, rows_cache=tmp_path, **sized)
    assert first == fresh  # the cache changes nothing the job measures
    files = set(tmp_path.glob("*.json"))
    assert len(files) == 2  # the base's rows and the damage's sizing
    (sizing,) = [f for f in files if isinstance(json.loads(f.read_text()), dict)]  # the rows are a list
    edited = json.loads(sizing.read_text())
    edited["fractions"]["2"] = 0.25
    sizing.write_text(json.dumps(edited))
    _, second, damage = repair_rows(base, tokenizer, prompts, [0, 2], TARGETS, rows_cache=tmp_path, **sized)
    assert damage.fractions == {0: fresh_damage.fractions[0], 2: 0.25} and second["kl_alone"] == first["kl_alone"]
    repair_rows(base, tokenizer, prompts, [1, 2], TARGETS, rows_cache=tmp_path, **sized)
    assert len(list(tmp_path.glob("*.json"))) == 3
