"""DDP for real: two CPU processes under torchrun (gloo) end the search with the same alpha and selection."""

import json
import os
import subprocess
import sys

import pytest

from flexora_trl.record import RECORD_NAME, SelectionRecord

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "ddp_train.py")


@pytest.mark.slow
@pytest.mark.parametrize("hypergradient", ["first_order", "unrolled"])
def test_two_ranks_agree_on_alpha_and_selection(tiny_llama_dir, tmp_path, hypergradient):
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               SCRIPT, tiny_llama_dir, str(tmp_path), hypergradient]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world_size"] == 2
    assert ranks[0]["alpha"] == ranks[1]["alpha"]
    assert ranks[0]["selected"] == ranks[1]["selected"] == ranks[0]["lora_blocks"] == ranks[1]["lora_blocks"]
    assert any(value != 0 for value in ranks[0]["alpha"].values())
    assert SelectionRecord.read(str(tmp_path)).selected_layers == ranks[0]["selected"]
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["layers_to_transform"] == ranks[0]["selected"]
    assert (tmp_path / "checkpoint-4" / RECORD_NAME).exists()
