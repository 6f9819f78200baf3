"""Tiny real models and data for the tests: a Llama (or GPT-2) built from a config and a BPE tokenizer trained in a
second, saved to a directory like any local checkpoint. Nothing is downloaded."""

from __future__ import annotations

import random

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

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
