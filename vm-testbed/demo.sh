#!/bin/bash
# make demo: provisiond in a private network namespace; one QEMU machine
# PXE-boots to an idle resource. Ctrl-C tears everything down; DEMO_EXIT=1
# tears down as soon as the machine is idle (CI smoke). See vm-testbed/demo.py.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
[ "$(id -u)" = 0 ] || { echo "demo: needs root (network namespace, tap devices)" >&2; exit 1; }
export DEMO_VENV=${DEMO_VENV:-$REPO/.venv}
[ -x "$DEMO_VENV/bin/provisiond" ] || { echo "demo: $DEMO_VENV/bin/provisiond missing (make install)" >&2; exit 1; }
exec "$DEMO_VENV/bin/python" "$HERE/demo.py" "$@"
