#!/usr/bin/env bash
# The quick start: bgsyncd on its built-in defaults against the local emulator.
# No API key and no network needed. Ctrl-C ends it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/venv.sh"
exec "$root/.venv/bin/bgsyncd" demo "$@"
