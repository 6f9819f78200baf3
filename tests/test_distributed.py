"""DDP for real: two CPU processes under torchrun (gloo) end the search with the same alpha and selection."""

import json
import os
import subprocess
import sys

import pytest

from flexora_trl.record import RECORD_NAME, SelectionRecord

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "ddp_train.py")


@pytest.mark.slow
# The third: an ablation pass that stops measuring blocks on its own (`score_early_stop`), 20 batches per rank.
@pytest.mark.parametrize("hypergradient, options", [
    ("first_order", {}), ("unrolled", {}),
    ("first_order", {"selection_score": "ablation", "score_val_batches": 16, "score_early_stop": True,
                     "search_holdout_samples": 40, "per_device_eval_batch_size": 1, "selection_rule": "top_k",
                     "selection_top_k": 2}),
], ids=["first_order", "unrolled", "ablation_early_stop"])
def test_two_ranks_agree_on_alpha_and_selection(tiny_llama_dir, tmp_path, hypergradient, options):
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               SCRIPT, tiny_llama_dir, str(tmp_path), hypergradient, json.dumps(options)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world_size"] == 2
    assert ranks[0]["alpha"] == ranks[1]["alpha"]
    assert ranks[0]["score_batches"] == ranks[1]["score_batches"]  # the same blocks measured on every rank
    if options.get("score_early_stop"):  # and the pass did stop some blocks before others
        assert len(set(ranks[0]["score_batches"].values())) > 1
    assert ranks[0]["selected"] == ranks[1]["selected"] == ranks[0]["lora_blocks"] == ranks[1]["lora_blocks"]
    assert any(value != 0 for value in ranks[0]["alpha"].values())
    assert SelectionRecord.read(str(tmp_path)).selected_layers == ranks[0]["selected"]
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["layers_to_transform"] == ranks[0]["selected"]
    assert (tmp_path / "checkpoint-4" / RECORD_NAME).exists()
