"""The selection scores (`selection_score`): the taylor score is the mask's gradient (checked against central finite
differences in float64), the ablation score the loss measured with one block's LoRA off (the blocks below it
replayed, not run), the gate warm-up takes inner steps only, and every score reaches the record with its spread and
the separation of kept and dropped blocks."""

import contextlib
import itertools
import statistics

import pytest
import torch

from flexora_trl.gates import BlockGates
from flexora_trl.hypergradient import FirstOrder
from flexora_trl.record import SelectionRecord
from flexora_trl.scores import AblationScore, BanzhafScore, FinalTaylorScore, InsertionScore, TaylorScore, summarise
from flexora_trl.search import GateSearch, SearchResult
from flexora_trl.search_data import search_dataloaders
from flexora_trl.selection import boundary, choose_blocks, log_scores, separation
from tiny import float64_search, flexora_trainer


@pytest.fixture()
def trained_search(tiny_gpt2_dir, chat_examples, tmp_path, request):
    """A real trainer's search in float64, three inner steps in (LoRA's B away from zero)."""
    search, _, val_loader = float64_search(tiny_gpt2_dir, chat_examples[:64], tmp_path, inner_steps=3,
                                           learning_rate=1e-2, selection_score=request.param, score_val_batches=2)
    search.model.eval()  # GPT-2's dropout off: the finite differences need the same function every call
    yield search, val_loader
    search.gates.remove()


def _tokens(batch) -> int:
    return int((batch["labels"][:, 1:] != -100).sum())


def _val_loss(search, batches) -> float:
    """The validation loss per answer token over all of `batches` (summed token losses over their count), from the
    logits: what the after-search scores compare, whatever the batches' sizes."""
    total = 0.0
    with torch.no_grad():
        for batch in batches:
            inputs = {key: batch[key] for key in ("input_ids", "attention_mask") if key in batch}
            logits, labels = search.model(**inputs).logits[:, :-1], batch["labels"][:, 1:]
            total += float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum"))
    return total / sum(_tokens(batch) for batch in batches)


@pytest.mark.parametrize("trained_search", ["taylor"], indirect=True)
def test_taylor_score_is_minus_the_mask_gradient(trained_search):
    search, val_loader = trained_search
    val = [next(iter(val_loader))]
    with search.score.outer_context(search.gates):  # an outer step's gradient, without its gate update
        FirstOrder()(search, val, [])
    (sample,) = search.score.samples
    mask = search.gates.mask
    for position in range(mask.numel()):
        assert float(sample[position]) == pytest.approx(_minus_mask_slope(search, val, position), rel=1e-4, abs=1e-9)
    assert mask.grad is None and not mask.requires_grad  # nothing left behind for the inner steps


def _minus_mask_slope(search, batches, position, step=1e-5) -> float:
    """Minus the central difference, in mask[position], of the validation loss averaged over `batches`."""
    mask, values = search.gates.mask, []
    for sign in (1, -1):
        with torch.no_grad():
            mask[position] += sign * step
        values.append(_val_loss(search, batches))
        with torch.no_grad():
            mask[position] -= sign * step
    return -(values[0] - values[1]) / (2 * step)


@pytest.mark.parametrize("trained_search", ["final_taylor"], indirect=True)
def test_final_taylor_is_minus_the_mask_gradient_at_the_final_lora(trained_search):
    search, val_loader = trained_search
    result = FinalTaylorScore().result(search, [], val_loader)
    batches = list(val_loader)[:2]
    mask = search.gates.mask
    for position, block in enumerate(search.gates.blocks):
        assert result.scores[block] == pytest.approx(_minus_mask_slope(search, batches, position), rel=1e-4, abs=1e-9)
    assert mask.grad is None and not mask.requires_grad
    assert all(param.requires_grad and param.grad is None for param in search.lora_params)


@contextlib.contextmanager
def _without_lora(search, block):
    """The same block without LoRA, by zeroing its B weights: what switching it off must mean."""
    saved = []
    for name, param in search.model.named_parameters():
        if "lora_B" in name and search.trainer.flexora_blocks.block_of(name) == block:
            saved.append((param, param.detach().clone()))
            param.data.zero_()
    try:
        yield
    finally:
        for param, value in saved:
            param.data.copy_(value)


@pytest.mark.parametrize("trained_search", ["ablation"], indirect=True)
def test_ablation_score_is_the_loss_with_the_block_switched_off(trained_search):
    search, val_loader = trained_search
    result = AblationScore().result(search, [], val_loader)
    batches = list(val_loader)[:2]
    everything = _val_loss(search, batches)
    for block in search.gates.blocks:
        with _without_lora(search, block):
            without = _val_loss(search, batches)
        assert result.scores[block] == pytest.approx(without - everything, rel=1e-4)
    assert float(search.gates.mask.min()) == 1.0  # every block switched back on


@pytest.mark.parametrize("trained_search", ["insertion"], indirect=True)
def test_insertion_score_is_the_loss_drop_of_the_block_alone(trained_search):
    search, val_loader = trained_search
    result = InsertionScore().result(search, [], val_loader)
    batches = list(val_loader)[:2]
    blocks = search.gates.blocks
    with _lora_on(search, blocks, set()):
        nothing = _val_loss(search, batches)
    for block in blocks:
        with _lora_on(search, blocks, {block}):
            alone = _val_loss(search, batches)
        assert result.scores[block] == pytest.approx(nothing - alone, rel=1e-4)
    assert float(search.gates.mask.min()) == 1.0  # every block switched back on


def _lora_on(search, blocks, on):
    """Only the blocks in `on` keep their LoRA (the others' B weights zeroed)."""
    stack = contextlib.ExitStack()
    for block in blocks:
        if block not in on:
            stack.enter_context(_without_lora(search, block))
    return stack


@pytest.mark.parametrize("trained_search", ["banzhaf"], indirect=True)
def test_banzhaf_score_is_the_blocks_contribution_in_each_batchs_drawn_context(trained_search):
    """On each batch a context drawn with the seed (each block's LoRA off with probability one half): the loss
    without the block's LoRA minus with it, the other blocks as drawn; averaged over the batches' answer tokens."""
    search, val_loader = trained_search
    result = BanzhafScore().result(search, [], val_loader)
    blocks = search.gates.blocks
    draws = torch.Generator().manual_seed(search.trainer.args.seed)
    contexts = [torch.rand(len(blocks), generator=draws) < 0.5 for _ in range(2)]
    assert any(0 < int(off.sum()) < len(blocks) for off in contexts)  # a context between the two ends
    for position, block in enumerate(blocks):
        differences = []
        for batch, off in zip(list(val_loader)[:2], contexts):
            context = {b for b, is_off in zip(blocks, off.tolist()) if not is_off} - {block}
            with _lora_on(search, blocks, context):
                without = _val_loss(search, [batch])
            with _lora_on(search, blocks, context | {block}):
                differences.append((without - _val_loss(search, [batch])) * _tokens(batch))
        tokens = sum(_tokens(batch) for batch in list(val_loader)[:2])
        assert result.scores[block] == pytest.approx(sum(differences) / tokens, rel=1e-4, abs=1e-12)
    assert float(search.gates.mask.min()) == 1.0


@pytest.mark.parametrize("rule", [dict(selection_rule="top_k", selection_top_k=2), dict(selection_rule="positive")])
@pytest.mark.parametrize("trained_search", ["forward"], indirect=True)
def test_forward_selection_adds_the_block_that_lowers_the_loss_most_given_those_on(trained_search, rule):
    """Replayed by brute force with the other blocks' B weights zeroed: each round the block whose LoRA, added to
    those already on, lowers the validation loss most; the selection is the blocks added and each one's score is its
    gain when added (raised to a later one), a block left out its gain in the last round."""
    search, val_loader = trained_search
    for key, value in rule.items():
        setattr(search.options, key, value)
    result = search.score.result(search, [], val_loader)
    batches, blocks = list(val_loader)[:2], search.gates.blocks
    rounds = 2 if rule["selection_rule"] == "top_k" else len(blocks)
    on, added = set(), []
    while len(added) < rounds:
        with _lora_on(search, blocks, on):
            now = _val_loss(search, batches)
        gains = {}
        for block in sorted(set(blocks) - on):
            with _lora_on(search, blocks, on | {block}):
                gains[block] = now - _val_loss(search, batches)
        best = max(gains, key=gains.get)
        if rule["selection_rule"] == "positive" and gains[best] <= 0 and added:
            break
        added.append((best, gains[best]))
        on.add(best)
    floor = -float("inf")
    for block, gain in reversed(added):
        floor = max(floor, gain)
        assert result.scores[block] == pytest.approx(floor, rel=1e-4)
    for block in set(blocks) - on:
        assert result.scores[block] == pytest.approx(gains[block], rel=1e-4)
    assert choose_blocks(result.scores, search.options) == sorted(on)
    assert 0 < len(on) < len(blocks) or rule["selection_rule"] == "positive"
    assert float(search.gates.mask.min()) == 1.0  # every block switched back on


@pytest.mark.parametrize("trained_search", ["ablation", "insertion", "banzhaf"], indirect=True)
def test_ablation_runs_only_the_blocks_a_switch_can_change(trained_search):
    """Block i runs once per batch for the reference pass and once for each switched block at or below it; the
    blocks below replay their outputs (the scores staying the measured losses is the tests above)."""
    search, val_loader = trained_search
    stack = search.model.get_submodule(search.trainer.flexora_blocks.stack)
    runs = [0] * len(stack)
    handles = [block.mlp.register_forward_hook(lambda *_, i=i: runs.__setitem__(i, runs[i] + 1))
               for i, block in enumerate(stack)]
    search.score.result(search, [], val_loader)
    for handle in handles:
        handle.remove()
    batches = search.options.score_val_batches
    assert runs == [batches * (1 + sum(b <= i for b in search.gates.blocks)) for i in range(len(stack))]
    assert all("forward" not in vars(block) for block in stack)  # every block computes again after


@pytest.mark.parametrize("trained_search", ["ablation"], indirect=True)
def test_a_score_takes_each_validation_batch_once(trained_search):
    """Asked for more batches than the loader has, the score measures each once: dropout is off, so a batch seen
    again would give the same losses, cost a pass per block and shrink the standard error."""
    search, val_loader = trained_search
    search.options.score_val_batches = len(val_loader) + 3
    top = search.model.get_submodule(search.trainer.flexora_blocks.stack)[-1]
    runs = []
    handle = top.mlp.register_forward_hook(lambda *_: runs.append(1))
    result = AblationScore().result(search, [], val_loader)
    handle.remove()
    assert len(runs) == len(val_loader) * (1 + len(search.gates.blocks))
    batches = list(val_loader)
    everything = _val_loss(search, batches)
    block = search.gates.blocks[0]
    with _without_lora(search, block):
        assert result.scores[block] == pytest.approx(_val_loss(search, batches) - everything, rel=1e-4)


def test_ablation_is_measured_in_full_precision_under_bf16_autocast(tiny_llama_dir, chat_examples, tmp_path):
    """A block's effect on the loss can be below bf16's resolution: a bf16 run's ablation must still match the
    float32 loss differences, not bf16-rounded ones."""
    trainer = flexora_trainer(tiny_llama_dir, tmp_path, chat_examples[:64], bf16=True, learning_rate=1e-2,
                              selection_score="ablation", score_val_batches=2)
    search = GateSearch(trainer, BlockGates(trainer.flexora_blocks), trainer.flexora_args)
    train_loader, val_loader, _ = search_dataloaders(trainer)
    for batch in itertools.islice(train_loader, 3):  # LoRA's B away from zero
        search._inner_step([batch])
    search.model.eval()
    result = AblationScore().result(search, [], val_loader)
    batches = list(val_loader)[:2]

    def float32_loss():
        with torch.no_grad():  # no autocast here: the model's own float32
            losses = [float(trainer.compute_loss(search.model, dict(batch))) * _tokens(batch) for batch in batches]
            return sum(losses) / sum(_tokens(batch) for batch in batches)

    everything = float32_loss()
    for block in search.gates.blocks:
        with _without_lora(search, block):
            assert result.scores[block] == pytest.approx(float32_loss() - everything, rel=1e-3, abs=1e-7)
    search.gates.remove()


@pytest.mark.parametrize("score", ["gate", "taylor", "ablation", "insertion", "banzhaf", "forward", "final_taylor"])
def test_every_score_reaches_the_selection_and_the_record(score, tiny_llama_dir, chat_examples, tmp_path):
    trainer = flexora_trainer(
        tiny_llama_dir, tmp_path / score, chat_examples[:48], selection_score=score, gate_warmup_fraction=0.5,
        search_samples=32, search_holdout_samples=16, per_device_train_batch_size=4, per_device_eval_batch_size=4,
        search_val_batches=2, score_val_batches=2, max_steps=1,
    )
    trainer.train()
    record = trainer.flexora_record
    assert record.search_inner_steps == 8
    assert record.search_warmup_steps == 4 and record.search_outer_steps == 4
    assert len(record.alpha_trajectory) == 4
    scores = record.scores
    assert set(scores) == set(range(4)) and set(record.score_stderr) == set(range(4))
    if score == "gate":
        assert record.scores == record.alpha and record.score_batches is None
    else:  # the validation batches behind each score: taylor's 2 per outer step, or those measured after the search
        assert record.score_batches == {block: 4 * 2 if score == "taylor" else 2 for block in range(4)}
    expected = sorted(b for b, v in scores.items() if v > 0) or [max(scores, key=scores.get)]
    assert record.selected_layers == expected
    assert isinstance(record.score_separation["separated"], bool)
    assert 0 <= record.score_seconds < record.search_seconds  # what the score took, apart from the steps


def test_a_count_score_is_measured_after_the_search_and_sets_the_count(tiny_llama_dir, chat_examples, tmp_path):
    """`selection_count_score`: the same search as without it, the count score measured on it as that score alone
    would be (a run ranking by `final_taylor` gives the same figures), its blocks above zero set how many of the gate's
    highest are kept, the plan counts its pass, and the saved record gives its per-block figures."""
    runs = {}
    for name, options in (("count", dict(selection_count_score="final_taylor")),
                          ("alone", dict(selection_score="final_taylor"))):
        runs[name] = flexora_trainer(
            tiny_llama_dir, tmp_path / name, chat_examples[:48], search_samples=32, search_holdout_samples=16,
            per_device_train_batch_size=4, per_device_eval_batch_size=4, search_val_batches=2, score_val_batches=2,
            max_steps=1, **options)
        runs[name].train()
    record, alone = runs["count"].flexora_record, runs["alone"].flexora_record
    assert record.alpha == alone.alpha  # the same search
    assert record.count_scores == alone.scores and record.count_stderr == alone.score_stderr
    count = max(1, sum(value > 0 for value in record.count_scores.values()))
    assert record.selected_layers == sorted(sorted(record.alpha, key=lambda b: (-record.alpha[b], b))[:count])
    assert alone.search_plan["score_cost"] > 0 and record.search_plan["score_cost"] == alone.search_plan["score_cost"]
    saved = SelectionRecord.read(str(tmp_path / "count"))
    assert saved.count_scores == record.count_scores and saved.selected_layers == record.selected_layers


def test_separation_compares_the_boundary_with_its_noise():
    scores = {0: 0.5, 1: 0.1, 2: 0.05, 3: -0.4}
    split = separation(scores, {0: 0.01, 1: 0.01, 2: 0.01, 3: 0.01}, [0, 1])
    assert (split["weakest_kept"], split["strongest_dropped"]) == (1, 2)
    assert split["gap"] == pytest.approx(0.05) and split["noise"] == pytest.approx(2 * 0.01 * 2**0.5)
    assert split["separated"]
    assert not separation(scores, {b: 0.05 for b in scores}, [0, 1])["separated"]
    assert separation(scores, {}, [0, 1, 2, 3])["separated"]
    assert separation(scores, {b: 0.0 for b in scores}, [0, 1])["separated"] is None  # no spread: no noise estimate


def test_a_boundary_inside_the_noise_is_logged_as_a_coin_flip_and_a_clear_one_is_not(caplog):
    """The warning names both blocks, the gap and the noise, what such selections measured, and the budget to raise."""
    scores = {0: 0.5, 1: 0.1, 2: 0.05, 3: -0.4}
    result = SearchResult(alpha=scores, gates={}, scores=scores, score_stderr={b: 0.05 for b in scores})
    with caplog.at_level("WARNING", logger="flexora_trl.selection"):
        log_scores("gate", result, [0, 1], separation(scores, result.score_stderr, [0, 1]))
    assert "weakest kept block (1) and the strongest dropped one (2)" in caplog.text
    assert "coin flip" in caplog.text and "level with random blocks" in caplog.text
    assert "`search_samples`" in caplog.text
    caplog.clear()
    result.score_stderr = {b: 0.001 for b in scores}
    with caplog.at_level("WARNING", logger="flexora_trl.selection"):
        log_scores("gate", result, [0, 1], separation(scores, result.score_stderr, [0, 1]))
    assert not caplog.records


def test_a_score_on_one_validation_batch_says_its_noise_is_unmeasured(tiny_llama_dir, chat_examples, tmp_path,
                                                                       caplog):
    """A hold-out of one evaluation batch: the ablation runs on that batch once (and the plan counts it once), and
    the record and the log say the selection's boundary has no noise estimate instead of calling it separated."""
    trainer = flexora_trainer(
        tiny_llama_dir, tmp_path, chat_examples[:40], selection_score="ablation", search_samples=16,
        search_holdout_samples=4, per_device_train_batch_size=4, per_device_eval_batch_size=4, score_val_batches=8,
        selection_rule="top_k", selection_top_k=2, max_steps=1,
    )
    with caplog.at_level("WARNING", logger="flexora_trl.selection"):
        trainer.train()
    record = trainer.flexora_record
    assert record.search_plan["score_cost"] == pytest.approx(1 * (0.7 + 0.4 * 4))  # one batch, 4 candidate blocks
    assert set(record.score_stderr.values()) == {0.0}
    assert record.score_separation["separated"] is None
    assert "no spread" in caplog.text and "search_holdout_samples" in caplog.text


def test_taylor_without_outer_steps_is_a_clear_error():
    class Empty:
        gates = None

    with pytest.raises(RuntimeError, match="no outer step"):
        TaylorScore().result(Empty(), [], None)


def test_summarise_takes_each_block_over_its_own_batches():
    """NaN = a block not measured on that batch (`score_early_stop`): its mean, standard error and count are over
    the batches it was measured on; with none missing, the plain mean and standard error of the mean."""
    samples = [torch.tensor([1.0, 2.0]), torch.tensor([3.0, float("nan")]), torch.tensor([5.0, float("nan")])]
    result = summarise([7, 9], samples)
    assert result.scores == {7: pytest.approx(3.0), 9: pytest.approx(2.0)}
    assert result.stderr == {7: pytest.approx(statistics.stdev([1, 3, 5]) / 3**0.5), 9: 0.0}
    assert result.batches == {7: 3, 9: 1}
    weighted = summarise([7, 9], samples, weights=[1, 2, 7])  # per-token: batches of 1, 2 and 7 answer tokens
    assert weighted.scores == {7: pytest.approx((1 + 3 * 2 + 5 * 7) / 10), 9: pytest.approx(2.0)}
    assert weighted.stderr[7] == pytest.approx(_token_mean([(1, 1), (3, 2), (5, 7)])[1])
    assert weighted.batches == result.batches


def _token_mean(rises):
    """The per-token mean of per-batch mean rises [(rise, tokens)] and its standard error (a weighted mean's)."""
    total = sum(tokens for _, tokens in rises)
    mean = sum(rise * tokens for rise, tokens in rises) / total
    spread = sum((tokens / total) ** 2 * (rise - mean) ** 2 for rise, tokens in rises) * len(rises) / (len(rises) - 1)
    return mean, spread**0.5


def test_early_stop_measures_only_the_blocks_in_doubt(tiny_gpt2_dir, chat_examples, tmp_path):
    """`score_early_stop`: every block on the first 8 batches, then only those within 2 standard errors of the
    boundary of the current scores, batch by batch (replayed here in plain Python on the per-batch rises of the
    same batches); a block's score is the mean over its own batches' answer tokens, and the pass is shorter than the
    full one."""
    search, _, val_loader = float64_search(
        tiny_gpt2_dir, chat_examples[:64], tmp_path, inner_steps=8, learning_rate=2e-2, selection_score="ablation",
        per_device_eval_batch_size=1, search_holdout_samples=16, score_val_batches=16, score_early_stop=True,
        selection_rule="top_k", selection_top_k=1)
    search.model.eval()
    blocks, everyone = search.gates.blocks, list(range(len(search.gates.blocks)))
    rises = [(search.score.measure(search, batch, everyone).tolist(), _tokens(batch)) for batch in val_loader]
    assert len(rises) == 16 and len({tokens for _, tokens in rises}) > 1  # answers of different lengths
    kept = {position: [] for position in everyone}
    for index, (row, tokens) in enumerate(rises):
        doubt = everyone
        if index >= 8:
            means = {blocks[p]: _token_mean(kept[p])[0] for p in everyone}
            line = boundary(means, search.options)
            doubt = [p for p in everyone if abs(means[blocks[p]] - line) <= 2 * _token_mean(kept[p])[1]]
        for position in doubt:
            kept[position].append((row[position], tokens))
    result = search.score.result(search, [], val_loader)
    assert result.batches == {blocks[p]: len(kept[p]) for p in everyone}
    assert result.scores == {blocks[p]: pytest.approx(_token_mean(kept[p])[0], rel=1e-9) for p in everyone}
    assert min(result.batches.values()) < 16 and max(result.batches.values()) > 8  # some stopped, some went on
    search.gates.remove()


def test_block_dropout_trains_only_the_blocks_drawn_on(tiny_gpt2_dir, chat_examples, tmp_path):
    """`search_block_dropout`: on an inner step the LoRA of a block drawn off gets no gradient, so its B (0 at init)
    stays exactly 0 while the others' move; the draws come from the seed, and every block is on again after."""
    search, _, _ = float64_search(tiny_gpt2_dir, chat_examples[:64], tmp_path, inner_steps=1, learning_rate=1e-2,
                                  search_block_dropout=0.5)
    off = torch.rand(len(search.gates.blocks), generator=torch.Generator().manual_seed(search.trainer.args.seed)) < 0.5
    assert 0 < int(off.sum()) < len(off)  # the seed's first draw switches some blocks off and leaves some on
    for position, block in enumerate(search.gates.blocks):
        moved = [bool(param.abs().sum() > 0) for name, param in zip(search.lora_names, search.lora_params)
                 if "lora_B" in name and f".h.{block}." in name]
        assert moved and all(m == (not off[position]) for m in moved), (block, moved)
    assert bool((search.gates.mask == 1).all())
    search.gates.remove()
