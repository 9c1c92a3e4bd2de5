#!/usr/bin/env bash
# The offline quick start: set up, then ingest a generated demo video into the embedded memory,
# show what the memory holds, and answer a question about the video with the tiny model.
# Nothing is downloaded. Data lives in .flashlive/ (override with FLASHLIVE_DATA_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export FLASHLIVE_DATA_DIR=${FLASHLIVE_DATA_DIR:-$PWD/.flashlive}
mkdir -p "$FLASHLIVE_DATA_DIR"
fl=.venv/bin/flashlive
demo="$FLASHLIVE_DATA_DIR/demo.mp4"

[ -f "$demo" ] || $fl demo-video "$demo" --seconds 60
echo "== ingest: sample 1 fps, encode 4-frame clips, append to memory (embedded Redis, AOF on)"
$fl memory ls --json | grep -q '"demo"' && $fl memory show demo --json >/dev/null \
  || $fl ingest "$demo" --name demo --backfill --model tiny
echo "== memory"
$fl memory ls
$fl memory export demo --out "$FLASHLIVE_DATA_DIR/demo-contact-sheet.jpg"
echo "== ask (tiny preset: real architecture, random weights, so the words are noise)"
$fl ask-file "$demo" "What colour is the ball at the end?" --model tiny --max-new-tokens 24 --json
