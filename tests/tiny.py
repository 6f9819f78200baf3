"""Tiny real models and data for the tests: a Llama (or GPT-2) built from a config and a BPE tokenizer trained in a
second, saved to a directory like any local checkpoint. Nothing is downloaded."""

from __future__ import annotations

import random

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast,
                          TrainerCallback)

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] }}<|im_end|>{% endgeneration %}"
    "{% else %}{{ message['content'] }}<|im_end|>{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
WORDS = "red green blue cat dog sun moon tree river stone bird fish apple bread milk snow rain wind fire".split()


def make_examples(count: int, seed: int = 0) -> list[dict]:
    """Chat examples with a learnable rule: the assistant repeats the user's words in reverse order."""
    rng = random.Random(seed)
    examples = []
    for _ in range(count):
        words = rng.sample(WORDS, rng.randint(2, 5))
        examples.append({"messages": [
            {"role": "user", "content": "reverse: " + " ".join(words)},
            {"role": "assistant", "content": " ".join(reversed(words))},
        ]})
    return examples


def build_tokenizer() -> PreTrainedTokenizerFast:
    corpus = [" ".join(WORDS), "reverse: user assistant system"] * 20
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    special = ["<unk>", "<|im_start|>", "<|im_end|>", "<pad>"]
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(corpus, trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<|im_start|>", eos_token="<|im_end|>",
        pad_token="<pad>",
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def build_model(tokenizer, num_layers: int = 4, arch: str = "llama", seed: int = 0):
    import torch

    torch.manual_seed(seed)
    common = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id)
    if arch == "gpt2":
        config = GPT2Config(n_embd=64, n_layer=num_layers, n_head=4, n_positions=256, **common)
        return GPT2LMHeadModel(config)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=num_layers, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False, **common)
    return LlamaForCausalLM(config)


def save_tiny_model(directory, num_layers: int = 4, arch: str = "llama") -> str:
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, num_layers=num_layers, arch=arch)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


def lora_config(**overrides):
    from peft import LoraConfig

    settings = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0, task_type="CAUSAL_LM")
    settings.update(overrides)
    return LoraConfig(**settings)


def flexora_trainer(model_dir, output_dir, examples, peft_config="default", eval_examples=None, model=None, **config):
    """A real FlexoraSFTTrainer on a tiny local model; `config` overrides FlexoraSFTConfig fields."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from flexora_trl import FlexoraSFTConfig, FlexoraSFTTrainer

    settings = dict(
        output_dir=str(output_dir), max_steps=6, per_device_train_batch_size=8, per_device_eval_batch_size=8,
        learning_rate=1e-3, search_samples=48, search_holdout_samples=16, logging_steps=2, report_to="none",
        use_cpu=True, save_strategy="no", assistant_only_loss=True, max_length=64, seed=0, bf16=False,
    )
    settings.update(config)
    return FlexoraSFTTrainer(
        model=model if model is not None else AutoModelForCausalLM.from_pretrained(model_dir),
        args=FlexoraSFTConfig(**settings),
        train_dataset=Dataset.from_list(examples),
        eval_dataset=Dataset.from_list(eval_examples) if eval_examples is not None else None,
        processing_class=AutoTokenizer.from_pretrained(model_dir),
        peft_config=lora_config() if peft_config == "default" else peft_config,
    )


class StopAfterStep(TrainerCallback):
    """Ends training after optimizer step `step`, as if the run died there (for resume tests)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


def float64_cross_entropy(outputs, labels, num_items_in_batch=None):
    """transformers' own loss upcasts logits with .float(), i.e. to float32; finite differences need float64."""
    import torch

    logits = outputs.logits[:, :-1].reshape(-1, outputs.logits.shape[-1])
    return torch.nn.functional.cross_entropy(logits.double(), labels[:, 1:].reshape(-1), ignore_index=-100)


def float64_search(model_dir, examples, output_dir, inner_steps: int = 2, **options):
    """A real trainer's search on a tiny GPT-2 in float64 (Llama's eager attention takes its softmax in float32,
    which caps any finite difference through it), `inner_steps` in: LoRA's B != 0 and Adam's moments set.
    Returns the search, the iterator of its coming training batches and its validation loader."""
    import torch
    from transformers import AutoModelForCausalLM

    from flexora_trl.gates import BlockGates
    from flexora_trl.search import GateSearch
    from flexora_trl.search_data import search_dataloaders

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64, attn_implementation="eager")
    settings = dict(loss_type="nll", per_device_train_batch_size=4, per_device_eval_batch_size=4,
                    peft_config=lora_config(target_modules=["c_attn", "c_fc"], fan_in_fan_out=True))
    trainer = flexora_trainer(model_dir, output_dir, examples, model=model, **{**settings, **options})
    trainer.compute_loss_func = float64_cross_entropy
    search = GateSearch(trainer, BlockGates(trainer.flexora_blocks, dtype=torch.float64), trainer.flexora_args)
    train_loader, val_loader, _ = search_dataloaders(trainer)
    batches = iter(train_loader)
    for _ in range(inner_steps):
        search._inner_step([next(batches)])
    return search, batches, val_loader


# ---------------------------------------------------------------- planted-layer data (tests/test_planted.py)
def build_sharp_llama(tokenizer, num_layers: int = 6, head_scale: float = 10.0, vocab_size: int | None = None,
                      seed: int = 0):
    """`build_model`'s tiny Llama (hidden 64, init 0.02, so every block stays close to the identity) with its
    `lm_head` scaled up so the next-token distributions are sharp rather than uniform (entropy 5.7 nats at
    vocab_size=1024 instead of ln V = 6.9; 4.5 instead of 5.7 at the tokenizer's 300). `vocab_size` may exceed the
    tokenizer's for pretokenized data."""
    import torch

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size or len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(head_scale)
    return model


def next_token_kl(teacher, base, input_ids) -> float:
    """Mean KL(teacher || base) of the next-token distributions over every position of `input_ids`; `base` may be
    a model or its log-probabilities on `input_ids`, computed once."""
    import torch

    with torch.no_grad():
        log_t = torch.log_softmax(teacher(input_ids).logits.float(), -1)
        log_b = base if torch.is_tensor(base) else torch.log_softmax(base(input_ids).logits.float(), -1)
    return (log_t.exp() * (log_t - log_b)).sum(-1).mean().item()


def plant_delta(base, blocks, kl_per_block: float = 0.3, rank: int = 8, module: str = "down_proj", seed: int = 1):
    """A teacher: a copy of `base` with a random rank-`rank` delta added to `mlp.<module>` of each planted block.

    Each block's delta is scaled (bisection) so that on its own it moves the next-token distribution of random
    token sequences by `kl_per_block` nats, so every planted block matters equally whatever its depth."""
    import copy

    import torch

    generator = torch.Generator().manual_seed(seed)
    probe = torch.randint(4, base.config.vocab_size, (32, 24), generator=generator)
    with torch.no_grad():
        base_log_probs = torch.log_softmax(base(probe).logits.float(), -1)
    teacher = copy.deepcopy(base).eval()
    deltas = {}
    for block in blocks:
        weight = getattr(teacher.model.layers[block].mlp, module).weight
        delta = torch.randn(weight.shape[0], rank, generator=generator) @ torch.randn(rank, weight.shape[1],
                                                                                      generator=generator)
        original = weight.detach().clone()

        def kl_at(scale):
            with torch.no_grad():
                weight.copy_(original + scale * delta)
            return next_token_kl(teacher, base_log_probs, probe)

        low, high = 0.0, 1e-3
        while kl_at(high) < kl_per_block:
            low, high = high, 2 * high
            if high > 1e3:
                raise ValueError(f"a delta in block {block} cannot move the next-token distribution by "
                                 f"{kl_per_block} nats (is the base model's output flat? see build_sharp_llama)")
        for _ in range(12):
            middle = (low + high) / 2
            low, high = (middle, high) if kl_at(middle) < kl_per_block else (low, middle)
        deltas[block] = high * delta
        with torch.no_grad():
            weight.copy_(original)
    with torch.no_grad():
        for block, delta in deltas.items():
            getattr(teacher.model.layers[block].mlp, module).weight.add_(delta)
    return teacher


def teacher_samples(teacher, count: int, prompt_tokens: int = 4, new_tokens: int = 20, seed: int = 1) -> list[dict]:
    """Pretokenized SFT rows: random prompt tokens, then `new_tokens` sampled from the teacher (temperature 1) as the
    completion (`completion_mask` marks them, so the loss is on the teacher's tokens only)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    prompts = torch.randint(4, teacher.config.vocab_size, (count, prompt_tokens), generator=generator)
    torch.manual_seed(seed)
    with torch.no_grad():
        rows = teacher.generate(
            prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
            do_sample=True, temperature=1.0, top_k=0, top_p=1.0, eos_token_id=None,
            pad_token_id=teacher.config.pad_token_id,
        )
    mask = [0] * prompt_tokens + [1] * new_tokens
    return [{"input_ids": row.tolist(), "completion_mask": mask} for row in rows]
