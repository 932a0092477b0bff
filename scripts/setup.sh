#!/usr/bin/env bash
# Installs mixdaemon into ./.venv on a fresh machine (idempotent). System packages: PortAudio for
# preview playback, Lua for the Reaper-script tests (skipped when apt is not available).
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  missing=()
  for pkg in libportaudio2 lua5.4 lua-socket; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi
[ -x .venv/bin/pip ] || python3 -m venv --clear .venv
# constraints.txt pins the CPU build of torch; without it pip may fetch a multi-GB CUDA build.
.venv/bin/pip install -q -c constraints.txt -e ".[dev]"
