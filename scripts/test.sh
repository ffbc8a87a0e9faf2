#!/usr/bin/env bash
# The whole test suite: install, then lint, format check, type check and pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/apt.sh
bash scripts/setup.sh "speech,dev,native"
export PATH="$PWD/.venv/bin:$PATH"
# The suite tests what the service runs: the compiled per-frame modules (voice/native.py).
state="$(python -m voice.nativebuild --state)"
echo "== per-frame modules: $state"
case "$state" in compiled*) ;; *) echo "the per-frame modules did not compile" >&2; exit 1 ;; esac

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
[ "$rc" -eq 0 ] || exit "$rc"

# The same modules interpreted, as on a machine where they could not be compiled: their own tests.
echo "== pytest, per-frame modules interpreted (VOICE_NATIVE=0)"
VOICE_NATIVE=0 pytest -q \
  tests/audio/test_g711.py tests/audio/test_pcm.py tests/call/test_cost.py tests/call/test_tools.py \
  tests/test_wsprotocol.py tests/call/test_bargein.py tests/call/test_core.py tests/call/test_pacer.py \
  tests/call/test_playout.py tests/call/test_recorder.py tests/call/test_runner.py \
  tests/bridges/twilio/test_marks.py tests/bridges/twilio/test_protocol.py tests/bridges/sip/test_jitter.py \
  tests/bridges/sip/test_rtp.py tests/bridges/sip/test_rtp_session.py tests/bridges/sip/test_telephone_event.py \
  tests/bridges/sip/test_fuzz.py
