#!/usr/bin/env bash
# Set up stockpyle in a virtual environment and run the demo on embedded stores
# (process memory -> SQLite); no server needed. Usage: bash .ci/demo.sh [--memcached HOST:PORT]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[sqlalchemy]'
exec .venv/bin/python -m stockpyle demo "$@"
