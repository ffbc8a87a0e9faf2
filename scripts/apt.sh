#!/usr/bin/env bash
# Install the Debian packages the test suite's real peers need: headless Chromium (widget, WebRTC),
# SIPp (sip-tester: SIP calls in and out) and sox; gcc compiles the per-frame modules (voice/native.py).
# Only missing packages are installed, so a warm machine pays nothing.
set -euo pipefail
packages=(chromium sip-tester sox gcc)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ "${#missing[@]}" -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq -o DPkg::Lock::Timeout=300
$sudo apt-get install -y -qq -o DPkg::Lock::Timeout=300 "${missing[@]}"
