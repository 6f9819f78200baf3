"""Run by tests/test_distributed.py under `torchrun --nproc_per_node 2` (gloo, CPU): a real FlexoraSFTTrainer run,
after which every rank writes what it ended the search with, so the test can compare the ranks."""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from tiny import flexora_trainer, make_examples  # noqa: E402

model_dir, output_dir, hypergradient, options = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
settings = dict(per_device_train_batch_size=4, per_device_eval_batch_size=4, search_samples=48, max_steps=4,
                save_strategy="steps", save_steps=2)
trainer = flexora_trainer(model_dir, output_dir, make_examples(96, seed=0), ddp_backend="gloo",
                          hypergradient=hypergradient, **{**settings, **options})
trainer.train()
trainer.save_model()
rank = trainer.args.process_index
record = trainer.flexora_record
with open(os.path.join(output_dir, f"rank{rank}.json"), "w") as handle:
    json.dump({
        "world_size": trainer.args.world_size,
        "selected": record.selected_layers,
        "alpha": record.to_dict()["alpha"],
        "score_batches": record.to_dict()["score_batches"],
        "lora_blocks": sorted({trainer.flexora_blocks.block_of(n)
                               for n, p in trainer.model.named_parameters() if p.requires_grad}),
    }, handle)
