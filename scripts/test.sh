#!/usr/bin/env bash
# The whole test suite: install, then lint, format check, type check and pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/apt.sh
bash scripts/setup.sh "speech,dev"
export PATH="$PWD/.venv/bin:$PATH"

echo "== ruff check"; ruff check .
echo "== ruff format --check"; ruff format --check .
echo "== mypy --strict voice bridges"; mypy --strict voice bridges

echo "== pytest"
set +e
pytest -q -ra "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: the suite must never be empty" >&2
  exit 1
fi
exit "$rc"
