"""`flexora-sft`: `trl sft` with Flexora, for users who fine-tune from a YAML config and the command line.

    flexora-sft --config recipes/trl-smollm2-flexora.yaml
    flexora-sft --model_name_or_path PATH --dataset_name NAME --output_dir out --search_samples 1000 ...

The arguments are TRL's own (`ScriptArguments`, `ModelConfig`, `DatasetMixtureConfig`) plus `FlexoraSFTConfig`, so
a `trl sft` config works unchanged; LoRA is on by default (`--use_peft`), since Flexora selects LoRA blocks.
"""

from __future__ import annotations


def make_parser():
    from trl import DatasetMixtureConfig, ModelConfig, ScriptArguments, TrlParser

    from .config import FlexoraSFTConfig

    parser = TrlParser((ScriptArguments, FlexoraSFTConfig, ModelConfig, DatasetMixtureConfig), prog="flexora-sft")
    parser.set_defaults(use_peft=True)
    return parser


def load_datasets(script_args, dataset_args):
    from datasets import load_dataset
    from trl import get_dataset

    if dataset_args.datasets:
        return get_dataset(dataset_args)
    if script_args.dataset_name:
        return load_dataset(script_args.dataset_name, name=script_args.dataset_config)
    raise ValueError("Give the training data: `datasets` (a list of {path, data_files, ...}) or `dataset_name`.")


def main(argv=None) -> None:
    from trl import get_peft_config, get_quantization_config

    from .trainer import FlexoraSFTTrainer

    script_args, training_args, model_args, dataset_args = make_parser().parse_args_and_config(args=argv)
    training_args.model_init_kwargs = dict(
        revision=model_args.model_revision, trust_remote_code=training_args.trust_remote_code,
        attn_implementation=model_args.attn_implementation, dtype=model_args.dtype,
    )
    dataset = load_datasets(script_args, dataset_args)
    wants_eval = training_args.eval_strategy != "no" or training_args.search_validation == "eval_dataset"
    trainer = FlexoraSFTTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=dataset[script_args.dataset_train_split],
        eval_dataset=dataset[script_args.dataset_test_split] if wants_eval else None,
        quantization_config=get_quantization_config(model_args),
        peft_config=get_peft_config(model_args),
    )
    trainer.train()
    trainer.save_model(training_args.output_dir)
    record = trainer.flexora_record
    trainer.accelerator.print(
        f"Flexora: LoRA on blocks {record.selected_layers} of {record.num_layers} "
        f"({100 * record.lora_params_fraction:.1f}% of all-block LoRA parameters); adapter and "
        f"flexora_selection.json saved in {training_args.output_dir}."
    )


if __name__ == "__main__":
    main()
