"""The search's size with `search_samples=None` (the default): `search_budget` of the planned fine-tune (the Trainer's
own step count), the floor and its log line, explicit budgets winning, and the early stop once the selection
settles."""

import logging
from types import SimpleNamespace

import pytest
from transformers import TrainingArguments

from flexora_trl.budget import MIN_SEARCH_STEPS, SEARCH_STEP_OVERHEAD, inner_step_cost, plan_search
from flexora_trl.options import FlexoraArguments
from tiny import flexora_trainer


def training_args(tmp_path, **overrides):
    settings = dict(output_dir=str(tmp_path), per_device_train_batch_size=8, per_device_eval_batch_size=8,
                    use_cpu=True, report_to="none")
    return TrainingArguments(**{**settings, **overrides})


def test_budget_sizes_the_search_from_max_steps(tmp_path):
    args = training_args(tmp_path, max_steps=2000)
    # an outer step = 16 validation samples = 2 inner steps' passes; every pass at the measured overhead
    options = FlexoraArguments(search_samples=None, search_val_batches=2)
    cost = 3.0 * SEARCH_STEP_OVERHEAD
    assert inner_step_cost(options, args) == pytest.approx(cost)
    plan = plan_search(options, args, planned=2000, available=49_800, candidates=30)
    steps = int(200 / cost)
    assert steps == 55 > MIN_SEARCH_STEPS  # 200 / 3.6
    assert (plan.inner_steps, plan.samples, plan.sized_by) == (steps, steps * 8, "search_budget")
    assert plan.estimated_share == pytest.approx(steps * cost / 2000) and plan.estimated_share <= 0.10


@pytest.mark.parametrize("score, cost", [("gate", 0.0), ("taylor", 0.0), ("final_taylor", 8 * 1.6),
                                         ("ablation", 8 * (0.7 + 0.4 * 30))])
def test_a_score_taken_after_the_search_is_paid_from_the_budget(score, cost, tmp_path):
    # 8 validation micro-batches of the training batch's size, 30 candidate blocks, a 5,000-step fine-tune
    args = training_args(tmp_path, max_steps=5000)
    options = FlexoraArguments(search_val_batches=2, selection_score=score, score_val_batches=8)
    plan = plan_search(options, args, planned=5000, available=49_800, candidates=30)
    assert plan.score_cost == pytest.approx(cost)
    step = 3.0 * SEARCH_STEP_OVERHEAD
    assert plan.inner_steps == int((500 - cost) / step)
    assert plan.estimated_share == pytest.approx((plan.inner_steps * step + cost) / 5000)
    assert plan.estimated_share <= 0.1


@pytest.mark.parametrize("rule, rounds", [(dict(selection_rule="top_k", selection_top_k=6), 6),
                                         (dict(selection_rule="top_k", selection_top_k=6, selection_max_layers=4), 4),
                                         (dict(selection_rule="top_fraction", selection_top_fraction=0.25), 8),
                                         (dict(selection_rule="positive"), 30)])
def test_forward_selection_is_paid_for_every_round_it_may_take(rule, rounds, tmp_path):
    """A round per block the rule may keep (`positive`: every block, the most it can cost), each over the blocks
    still off."""
    args = training_args(tmp_path, max_steps=5000)
    options = FlexoraArguments(search_val_batches=2, selection_score="forward", score_val_batches=8, **rule)
    plan = plan_search(options, args, planned=5000, available=49_800, candidates=30)
    assert plan.score_cost == pytest.approx(8 * sum(0.7 + 0.4 * (30 - done) for done in range(rounds)))


def test_the_score_is_paid_for_the_validation_batches_there_are(tmp_path):
    """A hold-out smaller than `score_val_batches` batches: the score takes each batch once, so it costs that many."""
    args = training_args(tmp_path, max_steps=5000)
    options = FlexoraArguments(search_val_batches=2, selection_score="ablation", score_val_batches=8)
    plan = plan_search(options, args, planned=5000, available=49_800, candidates=30, validation_samples=20)
    assert plan.score_cost == pytest.approx(3 * (0.7 + 0.4 * 30))  # 20 samples fill 3 batches of 8
    plan = plan_search(options, args, planned=5000, available=49_800, candidates=30, validation_samples=2_000)
    assert plan.score_cost == pytest.approx(8 * (0.7 + 0.4 * 30))


def test_budget_uses_the_trainers_own_step_count(tiny_llama_dir, chat_examples, tmp_path):
    # 10 examples in batches of 4: 3 batches an epoch, accumulated 2 by 2 is 2 optimizer steps (the last one short),
    # so 3 epochs are 6 steps: the plan must count what the fine-tune then takes
    trainer = flexora_trainer(tiny_llama_dir, tmp_path / "out", chat_examples[:10], search_samples=None,
                              search_holdout_samples=4, per_device_train_batch_size=4, gradient_accumulation_steps=2,
                              max_steps=-1, num_train_epochs=3, search_steps=2)
    trainer.train()
    assert trainer.flexora_record.search_plan["finetune_steps"] == trainer.state.max_steps == 6
    # the budget sizes the search from that count: 20 % of 1,875 planned steps at 2 passes an inner step
    options = FlexoraArguments(search_samples=None, search_val_batches=1, search_budget=0.2)
    args = SimpleNamespace(per_device_train_batch_size=4, gradient_accumulation_steps=2, world_size=2,
                           per_device_eval_batch_size=8)
    plan = plan_search(options, args, planned=1875, available=9_800, candidates=30)
    assert plan.inner_steps == int(0.2 * 1875 / (2.0 * SEARCH_STEP_OVERHEAD)) == 156  # 375 / 2.4
    assert plan.samples == 156 * 4 * 2 * 2


def test_short_runs_get_the_floor_and_say_so(tmp_path, caplog, tiny_llama_dir, chat_examples):
    plan = plan_search(FlexoraArguments(), training_args(tmp_path), 40, 4_800, 30)  # the default options
    assert (plan.inner_steps, plan.sized_by) == (MIN_SEARCH_STEPS, "floor")
    assert plan.estimated_share > 0.10
    trainer = flexora_trainer(tiny_llama_dir, tmp_path / "out", chat_examples[:48], search_samples=None,
                              search_holdout_samples=16, per_device_train_batch_size=4, max_steps=2)
    with caplog.at_level(logging.INFO, logger="flexora_trl"):
        trainer.train()
    record = trainer.flexora_record
    assert record.search_inner_steps == MIN_SEARCH_STEPS and record.search_plan["sized_by"] == "floor"
    assert record.search_samples == 32  # the 48 examples less the 16 held out (8 steps of 4)
    assert f"no search shorter than {MIN_SEARCH_STEPS} inner steps was measured to select" in caplog.text
    assert "estimated" in caplog.text and record.search_share > 0


@pytest.mark.parametrize("explicit, steps", [(dict(search_samples=100), 13), (dict(search_steps=7), 7),
                                             (dict(search_samples=100, search_steps=5), 5)])
def test_explicit_budgets_win(explicit, steps, tmp_path):
    plan = plan_search(FlexoraArguments(**explicit), training_args(tmp_path), 10_000, 49_800, 30)
    assert plan.inner_steps == steps and plan.sized_by != "search_budget"


def test_search_ends_once_the_selection_settles(tiny_llama_dir, chat_examples, tmp_path):
    common = dict(search_samples=64, search_holdout_samples=16, per_device_train_batch_size=2, max_steps=1,
                  gate_lr=0.05)
    settled = flexora_trainer(tiny_llama_dir, tmp_path / "a", chat_examples[:80], search_patience=3, **common)
    settled.train()
    record = settled.flexora_record
    assert record.search_settled_at is not None
    assert record.search_inner_steps == record.search_settled_at < 32
    # the last 4 alphas (3 outer steps of patience) keep the same blocks above zero
    tail = [tuple(i for i, a in enumerate(row) if a > 0) for row in record.alpha_trajectory[-4:]]
    assert len(set(tail)) == 1
    full = flexora_trainer(tiny_llama_dir, tmp_path / "b", chat_examples[:80], **common)
    full.train()
    assert full.flexora_record.search_inner_steps == 32 and full.flexora_record.search_settled_at is None


def test_patience_needs_a_score_that_exists_during_the_search():
    with pytest.raises(ValueError, match="search_patience"):
        FlexoraArguments(search_patience=2, selection_score="ablation").validate()
