"""Shared fixtures: tiny local models and chat data (no hub access anywhere in the suite)."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("AXOLOTL_DO_NOT_TRACK", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

from tiny import make_examples, save_tiny_model  # noqa: E402


@pytest.fixture(autouse=True)
def environment_restored():
    """A benchmark's `main()` sets its own environment in this process (`benchmarks.run.offline_and_quiet`, e.g.
    transformers' verbosity `error`); later tests' subprocesses (`axolotl train`, whose output they read) must not
    inherit it."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """A 4-block Llama (hidden 64) with a BPE tokenizer and a chat template, saved like a local checkpoint."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama"), num_layers=4)


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny-gpt2"), num_layers=4, arch="gpt2")


@pytest.fixture(scope="session")
def chat_examples():
    return make_examples(96, seed=0)
