#!/usr/bin/env bash
# Set up everything and run the whole test suite: lint, mypy --strict, the tests against real
# memcached and PostgreSQL servers (installed and started here), the docs build and a quick
# benchmark smoke run. Needs only python3 and root (for apt-get: python3-venv when missing,
# memcached, PostgreSQL); one line per phase, apt-get and pip output in .ci/logs/.
# Usage: bash .ci/test.sh [extra pytest args]. Servers this run started are stopped when it
# ends; servers that were already running (say, from `eval "$(bash .ci/services.sh start)"`)
# are reused and left running.
set -euo pipefail
cd "$(dirname "$0")/.."
. .ci/lib.sh

PY=${PYTHON:-python3}
ensure_venv .venv
pip_install .venv -e '.[test]'

phase "servers (memcached, PostgreSQL)"
already_running=0
for port in ${STOCKPYLE_MEMCACHED_PORTS:-11311 11312} ${STOCKPYLE_POSTGRES_PORT:-55432}; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then already_running=1; fi
done
if [ "$already_running" = 1 ]; then
  trap 'echo "== servers that were running before are still running (bash .ci/services.sh stop)" >&2' EXIT
else
  # this run starts them: nothing is left behind (and the run's own exit status is kept)
  trap 'rc=$?; bash .ci/services.sh stop || true; exit $rc' EXIT
fi
services_env=$(bash .ci/services.sh start)
eval "$services_env"
# Server-backed tests fail instead of skipping when a server is missing.
export CI=${CI:-true}

echo "== ruff"; .venv/bin/ruff check stockpyle tests $(ls -d benchmarks 2>/dev/null)
.venv/bin/ruff format --check --quiet stockpyle tests $(ls -d benchmarks 2>/dev/null)
echo "== mypy --strict"; .venv/bin/mypy stockpyle
echo "== pytest"; .venv/bin/python -m pytest -q "$@"

# shove must work with setuptools that ships pkg_resources (above) and with one that does not.
echo "== shove with setuptools>=82 (no pkg_resources)"
[ -x .venv-new-setuptools/bin/python ] || "$PY" -m venv .venv-new-setuptools
.venv-new-setuptools/bin/python -m pip install -q --disable-pip-version-check \
  'setuptools>=82' -e '.[shove,testing]'
.venv-new-setuptools/bin/python -c \
  "import importlib.util, sys; sys.exit(importlib.util.find_spec('pkg_resources') is not None)" \
  || { echo "setuptools>=82 still ships pkg_resources: this leg would prove nothing"; exit 1; }
.venv-new-setuptools/bin/python -m pytest -q -p no:cacheprovider \
  tests/test_shove_compat.py tests/test_shove_store.py
if [ -f mkdocs.yml ]; then
  echo "== docs (strict)"
  site=$(mktemp -d)
  NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet --site-dir "$site"
  rm -rf "$site"
fi
if [ -f benchmarks/run.py ]; then
  # A smoke run (two rounds per case: its ratios are not measurements), so its tables go to
  # the log with its results, not to the screen and not into /tmp.
  echo "== benchmarks (quick smoke run; output: $CI_LOGS/benchmarks.log, $CI_LOGS/bench/)"
  quietly benchmarks .venv/bin/python benchmarks/run.py --quick --out "$CI_LOGS/bench"
  echo "== herd benchmark (threads and processes missing one key; output: $CI_LOGS/herd.log)"
  quietly herd .venv/bin/python benchmarks/herd.py --quick --out "$CI_LOGS/bench"
  echo "== end-to-end benchmark (processes x threads over PostgreSQL and memcached; output: $CI_LOGS/e2e.log)"
  quietly e2e .venv/bin/python benchmarks/e2e.py --quick --out "$CI_LOGS/bench"
fi
echo "== all green"
