#!/usr/bin/env bash
# The main job: install, then run the service on the embedded local engine (no API key needed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh speech,native
exec .venv/bin/voice serve "$@"
