#!/usr/bin/env bash
# Create .venv and install the project with the given extras (e.g. "speech" or "speech,dev").
# Debian packages the tests need (real peers) are installed by scripts/test.sh, not here.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-speech}"
py="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$py" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[${extras}]"
