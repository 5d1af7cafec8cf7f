#!/usr/bin/env bash
# The whole test suite, then the linters and the type checker. Exits non-zero
# on any failure. Extra arguments go to pytest (e.g. -k watcher).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/venv.sh"
cd "$root"
bin="$venv/bin"
status=0
"$bin/python" -m pytest "$@" || status=$?
"$bin/ruff" check bgsyncd tests bench || status=$?
"$bin/ruff" format --check bgsyncd tests bench || status=$?
"$bin/mypy" --strict bgsyncd tests bench || status=$?
"$bin/lint-imports" --no-cache || status=$?
exit $status
