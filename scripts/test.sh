#!/usr/bin/env bash
# Second README command (and CI): install, then run the whole test suite. Extra arguments go to pytest
# (e.g. `-m "not slow"` for the quick tests, `-m slow` for the end-to-end runs alone).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
venv="${FLEXORA_VENV:-.venv}"
export PATH="$(cd "$venv/bin" && pwd):$PATH"  # as if activated: axolotl's launcher execs `accelerate` from PATH
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 AXOLOTL_DO_NOT_TRACK=1 WANDB_MODE=disabled
exec "$venv/bin/python" -m pytest -p no:cacheprovider -q --durations=15 "$@"
