"""The selection rules and their bounds."""

import logging

import pytest

from flexora_trl.options import FlexoraArguments
from flexora_trl.selection import boundary, select_blocks

ALPHA = {0: 0.30, 1: -0.10, 2: 0.05, 3: -0.40, 4: 0.20, 5: -0.05}


def rule(**options):
    args = FlexoraArguments(**options)
    args.validate()
    return args


def test_positive_keeps_gates_above_the_mean():
    assert select_blocks(ALPHA, rule()) == [0, 2, 4]


def test_top_k_keeps_the_k_largest():
    assert select_blocks(ALPHA, rule(selection_rule="top_k", selection_top_k=2)) == [0, 4]


def test_top_fraction_rounds_up():
    assert select_blocks(ALPHA, rule(selection_rule="top_fraction", selection_top_fraction=0.5)) == [0, 2, 4]
    assert select_blocks(ALPHA, rule(selection_rule="top_fraction", selection_top_fraction=0.1)) == [0]


def test_max_layers_drops_the_smallest_gates():
    assert select_blocks(ALPHA, rule(selection_max_layers=2)) == [0, 4]


def test_an_empty_selection_is_filled_by_min_layers_and_logged(caplog):
    with caplog.at_level(logging.WARNING, logger="flexora_trl.selection"):
        chosen = select_blocks({0: 0.0, 1: 0.0, 2: 0.0}, rule(selection_min_layers=2))
    assert chosen == [0, 1]
    assert "selection_min_layers=2" in caplog.text


def test_min_layers_beyond_the_candidates_keeps_all():
    assert select_blocks({0: -1.0, 1: 1.0}, rule(selection_min_layers=5)) == [0, 1]


def test_a_count_score_sets_how_many_and_the_selection_score_which(caplog):
    """`selection_count_score`: as many blocks as its scores above zero, the highest by the selection's own score
    (here the gate's top 5, where its own `positive` rule keeps 3); the bounds still apply, and the log says it."""
    counted = {0: 0.02, 1: 0.01, 2: -0.03, 3: 0.04, 4: 0.001, 5: 0.005}
    with caplog.at_level(logging.INFO, logger="flexora_trl.selection"):
        assert select_blocks(ALPHA, rule(selection_count_score="final_taylor"), counted) == [0, 1, 2, 4, 5]
    assert "5 of 6 blocks' LoRA lower the validation loss by final_taylor; keeping the 5 highest by gate" in caplog.text
    assert select_blocks(ALPHA, rule(selection_count_score="ablation"), {b: -1.0 for b in ALPHA}) == [0]  # min 1
    assert select_blocks(ALPHA, rule(selection_count_score="ablation", selection_max_layers=2), counted) == [0, 4]


def test_the_boundary_lies_between_the_kept_and_the_dropped_scores():
    """Halfway between the weakest kept and the strongest dropped score (top 2: 0.20 and 0.05); 0 where `positive`'s
    sign decided alone; halfway again where a bound moved the cut; none when a count keeps every block."""
    assert boundary(ALPHA, rule(selection_rule="top_k", selection_top_k=2)) == pytest.approx((0.20 + 0.05) / 2)
    assert boundary(ALPHA, rule(selection_rule="positive")) == 0.0
    assert boundary({0: 0.1, 1: 0.2}, rule(selection_rule="positive")) == 0.0  # all kept: a sign could still flip
    assert boundary(ALPHA, rule(selection_rule="positive", selection_max_layers=2)) == pytest.approx(0.125)
    assert boundary(ALPHA, rule(selection_rule="top_k", selection_top_k=6)) is None


@pytest.mark.parametrize("options, key", [
    (dict(gate_lr=0), "gate_lr"),
    (dict(gate_lr=-0.01), "gate_lr"),
    (dict(search_samples=0), "search_samples"),
    (dict(search_validation="val"), "search_validation"),
    (dict(selection_rule="best"), "selection_rule"),
    (dict(selection_rule="top_k"), "selection_top_k"),
    (dict(selection_rule="top_fraction", selection_top_fraction=1.5), "selection_top_fraction"),
    (dict(selection_min_layers=3, selection_max_layers=2), "selection_max_layers"),
    (dict(selected_layers=[]), "selected_layers"),
    (dict(selected_layers=[1, 1]), "selected_layers"),
    (dict(hypergradient="second_order"), "hypergradient"),
    (dict(unroll_steps=0), "unroll_steps"),
    (dict(search_val_batches=0), "search_val_batches"),
    (dict(score_early_stop="yes", selection_score="ablation"), "score_early_stop"),
    (dict(score_early_stop=True), "score_early_stop"),  # the gate score has no batches to stop
    (dict(score_early_stop=True, selection_score="forward"), "score_early_stop"),  # its rounds measure every block
    (dict(selection_count_score="gate"), "selection_count_score.*'final_taylor'"),  # no natural zero to count by
    (dict(selection_count_score="final_taylor", selection_rule="top_k", selection_top_k=2), "selection_count_score"),
    (dict(selection_count_score="ablation", search_patience=3), "selection_count_score"),
    (dict(selection_count_score="ablation", selection_score="ablation", score_early_stop=True),
     "selection_count_score"),
    (dict(search_block_dropout=1.0), "search_block_dropout"),
    (dict(search_block_dropout=True), "search_block_dropout"),
    (dict(search_block_dropout=0.5, hypergradient="unrolled"), "search_block_dropout"),
    (dict(search_group_sparsity=0.0), "search_group_sparsity"),
    (dict(search_group_sparsity="0.5"), "search_group_sparsity"),
    (dict(search_group_sparsity=0.5, hypergradient="unrolled"), "search_group_sparsity"),
    (dict(search_optimizer="sgd"), "search_optimizer.*adamw.*normalized_sgd"),
    (dict(search_optimizer="normalized_sgd", hypergradient="unrolled"), "search_optimizer"),
])
def test_out_of_range_options_name_the_key(options, key):
    with pytest.raises(ValueError, match=key):
        rule(**options)
