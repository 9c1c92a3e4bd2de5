#!/usr/bin/env bash
# The offline quick start: set up, then `flashlive serve`: an embedded Redis, the demo video of the
# generated world looped as a live stream, the default small model, a query worker and the web app.
# Open the URL it prints; Ctrl-C stops everything. Nothing is downloaded. Data lives in .flashlive/
# (override with FLASHLIVE_DATA_DIR); extra arguments go to `flashlive serve` (e.g. --port 8080).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export FLASHLIVE_DATA_DIR=${FLASHLIVE_DATA_DIR:-$PWD/.flashlive}
mkdir -p "$FLASHLIVE_DATA_DIR"
exec .venv/bin/flashlive serve "$@"
