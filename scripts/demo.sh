#!/usr/bin/env bash
# Installs (if needed) and runs the main job: the shipped default model on example audio that the
# project synthesizes itself. Output lands in ./demo-output/converted.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/mixdaemon demo --out demo-output --engine neural "$@"
