#!/usr/bin/env bash
# mypy cannot follow setuptools' editable-install import hook, so type-check through a tree of
# symlinks that lays the folders out the way they are installed (flashlive.model -> model/, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .typecheck && mkdir -p .typecheck/flashlive
for f in flashlive/*.py; do ln -s "../../$f" ".typecheck/flashlive/$(basename "$f")"; done
for pkg in model memory stream web; do ln -s "../../$pkg" ".typecheck/flashlive/$pkg"; done
MYPY=${MYPY:-.venv/bin/mypy}
"$MYPY" .typecheck/flashlive "$@"
