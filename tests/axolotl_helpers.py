"""Axolotl configs, local datasets and a validation helper for the plugin tests (models come from conftest/tiny.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from tiny import make_examples

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"
PLUGIN = "axolotl_plugin.FlexoraPlugin"
# Offline and quiet: no hub, no telemetry, no trackers, CPU only.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "AXOLOTL_DO_NOT_TRACK": "1",
    "WANDB_MODE": "disabled", "CUDA_VISIBLE_DEVICES": "", "TOKENIZERS_PARALLELISM": "false",
}


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def alpaca_rows(count: int, seed: int = 0) -> list[dict]:
    """The chat examples' rule (reverse the words) as alpaca instruction/input/output rows."""
    return [
        {"instruction": "Reverse the words.", "input": ex["messages"][0]["content"].removeprefix("reverse: "),
         "output": ex["messages"][1]["content"]}
        for ex in make_examples(count, seed=seed)
    ]


def base_config(model_dir: str, output_dir: str, datasets: list[dict], **overrides) -> dict:
    """A small CPU LoRA run with a `flexora:` block; `overrides` replace top-level keys (None deletes one)."""
    cfg = {
        "base_model": model_dir,
        "plugins": [PLUGIN],
        "flexora": {"search_samples": 32, "search_holdout_samples": 8, "search_val_batches": 1},
        "datasets": datasets,
        "dataset_prepared_path": str(Path(output_dir) / "prepared"),
        "val_set_size": 0.0,
        "output_dir": output_dir,
        "sequence_len": 256,
        "sample_packing": False,
        "adapter": "lora",
        "lora_r": 4,
        "lora_alpha": 8,
        "lora_dropout": 0.0,
        "lora_target_modules": ["q_proj", "v_proj"],
        "micro_batch_size": 4,
        "gradient_accumulation_steps": 1,
        "num_epochs": 1,
        "max_steps": 4,
        "optimizer": "adamw_torch",
        "lr_scheduler": "constant",
        "learning_rate": 1e-3,
        "bf16": False,
        "fp16": False,
        "tf32": False,
        "logging_steps": 1,
        "save_strategy": "no",
        "seed": 0,
        "dataset_num_proc": 1,
        "special_tokens": {"pad_token": "<pad>"},
    }
    for key, value in overrides.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    return cfg


def write_config(path: Path, cfg: dict) -> str:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return str(path)


def validate(cfg: dict, gpu: bool = False):
    """Run Axolotl's own config validation (plugins registered, schema merged), with no model or dataset loaded.

    `gpu=True` validates against the capabilities of one Ampere-class GPU, as `axolotl train` would report them there.
    """
    from axolotl.utils.config import prepare_plugins, validate_config
    from axolotl.utils.dict import DictDefault

    cfg = DictDefault(json.loads(json.dumps(cfg)))
    prepare_plugins(cfg)
    if not gpu:
        return validate_config(cfg)
    import torch

    capabilities = {"bf16": True, "fp8": False, "tf32": True, "n_gpu": 1, "compute_capability": "sm_80"}
    env_capabilities = {"torch_version": torch.__version__.split("+")[0]}
    return validate_config(cfg, capabilities=capabilities, env_capabilities=env_capabilities)


def run(args: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run a command with the offline environment; fail with its output's tail if it fails."""
    env = {**os.environ, **OFFLINE_ENV}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited with {result.returncode}\n--- stdout\n{result.stdout[-6000:]}\n"
            f"--- stderr\n{result.stderr[-6000:]}"
        )
    return result


def axolotl_cli() -> list[str]:
    """`axolotl` from the interpreter running the tests (the venv's console script)."""
    return [str(Path(sys.executable).with_name("axolotl"))]
