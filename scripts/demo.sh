#!/usr/bin/env bash
# First README command: install, then run Flexora on SmolLM2-135M-Instruct with the embedded instruction data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
venv="${FLEXORA_VENV:-.venv}"
export PATH="$(cd "$venv/bin" && pwd):$PATH"  # as if activated: axolotl's launcher execs `accelerate` from PATH
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 AXOLOTL_DO_NOT_TRACK=1
exec "$venv/bin/python" -m flexora_trl.demo "$@"
