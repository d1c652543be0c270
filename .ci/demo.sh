#!/usr/bin/env bash
# Set up stockpyle in a virtual environment (.venv) and run the demo on embedded stores
# (process memory -> SQLite); no server needed. Needs only python3 (on Debian/Ubuntu,
# python3-venv is installed with apt-get when missing, as root).
# Usage: bash .ci/demo.sh [--memcached HOST:PORT]   (the memcache extra is installed then)
set -euo pipefail
cd "$(dirname "$0")/.."
. .ci/lib.sh

extras=sqlalchemy
for arg in "$@"; do
  case "$arg" in --memcached | --memcached=*) extras=sqlalchemy,memcache ;; esac
done

ensure_venv .venv
pip_install .venv -e ".[$extras]"
phase "stockpyle demo${*:+ $*}"
exec .venv/bin/python -m stockpyle demo "$@"
