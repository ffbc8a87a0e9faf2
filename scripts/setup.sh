#!/usr/bin/env bash
# Create .venv and install the project with the given extras (e.g. "speech,native" or "speech,dev,native").
# With "native", also compile the per-frame modules (voice/native.py), unless the build matches the sources.
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
if [[ ",${extras}," == *",native,"* ]] && ! .venv/bin/python -m voice.nativebuild --state | grep -q '^compiled'; then
  echo "compiling the per-frame modules (mypyc, about a minute)"
  if ! .venv/bin/python -m voice.nativebuild >.venv/native-build.log 2>&1; then
    tail -n 20 .venv/native-build.log >&2
    echo "warning: compiling failed (log: .venv/native-build.log); the service runs interpreted" >&2
  fi
fi
