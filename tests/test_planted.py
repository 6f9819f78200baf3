"""Planted-layer test of the search: a teacher differs from the base model only inside known blocks, generates the
training data, and the real FlexoraSFTTrainer search (first-order hypergradient, the default) must give exactly those
blocks the largest alpha.

Why this regime (measured, see the numbers in the test's docstring):
- The base is a 6-block hidden-64 Llama whose blocks stay near the identity (init 0.02) but whose `lm_head` is scaled
  x10, so the teacher's next-token distributions are sharp; with a flat random model the teacher's samples are nearly
  uniform and a planted delta moves the data by ~0.02 nats/token, below the search's noise.
- The teacher adds a random rank-8 delta to `mlp.down_proj` of each planted block, scaled so every planted block on
  its own moves the next-token distribution by 0.3 nats (a delta of one size is worth 5x more in block 0 than in block
  5, and the strongest planted block then takes all the signal).
- The student's LoRA sits where the delta is (`down_proj`, whose input, the block's own MLP features, is the one thing
  that differs between near-identity blocks), with rank 32 so that its random `A` already covers a quarter of the
  planted block's features. With LoRA on every projection the search ranks the *last* blocks first whatever is
  planted: the first-order hypergradient <dL_val/dy_l, lora_out_l> grows with how fast a block's LoRA learns, and
  late attention/MLP LoRA learn any small change of the output distribution fastest.
- vocab 1024 (pretokenized data, so the model may outgrow the tokenizer): MLP features of near-identity blocks are
  functions of the current token, so with 300 tokens the 128 features of any block cover ~40% of what block p can
  express and another block imitates the planted delta well enough to win one seed in nine.
- 128 inner steps at lr 3e-3 (4 passes over 512 samples), gate_lr 0.05: early on a block next to a planted one often
  leads; the planted block overtakes it once its LoRA `A` has turned towards the delta's features.
"""

import pytest
import torch

from tiny import build_sharp_llama, build_tokenizer, flexora_trainer, lora_config, plant_delta, teacher_samples

SEARCH_SAMPLES, HOLDOUT = 512, 64


@pytest.fixture
def one_thread():
    """One intra-op thread: 4x faster than two on a busy 2-core machine, and the same float sums on any machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("planted", [(1, 4), (2, 5), (0, 3)], ids=lambda p: "blocks_" + "_".join(map(str, p)))
def test_search_ranks_planted_blocks_first(planted, tiny_llama_dir, tmp_path, one_thread):
    """Measured with seeds 0-3 on each set (12 runs): recall 1.0 in all, smallest alpha margin between the weakest
    planted block and the strongest other block 0.66; each run 26-41 s on the shared 2-core machine."""
    seed = 0
    base = build_sharp_llama(build_tokenizer(), num_layers=6, head_scale=10.0, vocab_size=1024)
    teacher = plant_delta(base, planted, kl_per_block=0.3, rank=8, module="down_proj", seed=seed + 1)
    rows = teacher_samples(teacher, SEARCH_SAMPLES + HOLDOUT, prompt_tokens=4, new_tokens=20, seed=seed + 1)

    trainer = flexora_trainer(
        tiny_llama_dir,  # only its tokenizer is used: the model is `base`, the data pretokenized
        tmp_path / "out",
        rows,
        model=base,
        peft_config=lora_config(r=32, lora_alpha=64, target_modules=["down_proj"]),
        assistant_only_loss=False,  # the loss is on the teacher's tokens through `completion_mask`
        learning_rate=3e-3,
        per_device_train_batch_size=16,
        per_device_eval_batch_size=16,
        search_samples=SEARCH_SAMPLES,
        search_holdout_samples=HOLDOUT,
        search_steps=128,
        search_val_batches=2,
        gate_lr=0.05,
        max_steps=1,
        logging_steps=1000,
        disable_tqdm=True,
        gradient_checkpointing=False,  # TRL's default recomputes activations: the same numbers, 30% slower here
        seed=seed,
    )
    trainer.train()

    record = trainer.flexora_record
    assert record["search_inner_steps"] == record["search_outer_steps"] == 128
    alpha = {int(block): value for block, value in record["alpha"].items()}
    top = sorted(alpha, key=alpha.get, reverse=True)[: len(planted)]
    recall = len(set(top) & set(planted)) / len(planted)
    print(f"planted {planted}: alpha {[round(alpha[b], 3) for b in sorted(alpha)]}, top {sorted(top)}, "
          f"selected {record['selected_layers']}, search {record['search_seconds']:.1f} s")
    assert recall == 1.0, f"planted {planted}, top {sorted(top)}, alpha {alpha}"
