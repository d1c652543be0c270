# Shared by .ci/demo.sh, .ci/test.sh and .ci/services.sh (sourced, not run).
# One line per phase on stderr; the output of apt-get and pip goes to a log file under
# .ci/logs/ and is shown only when the step fails.

CI_LOGS=${STOCKPYLE_CI_LOGS:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/logs}

phase() { echo "== $*" >&2; }

# quietly LOG_NAME CMD...: run CMD with its output in $CI_LOGS/LOG_NAME.log; on failure print
# the end of that log and fail.
quietly() {
  local log="$CI_LOGS/$1.log"
  shift
  mkdir -p "$CI_LOGS"
  if ! "$@" >"$log" 2>&1; then
    echo "!! failed: $*" >&2
    echo "!! last lines of $log:" >&2
    tail -n 40 "$log" >&2
    return 1
  fi
}

# apt_install PACKAGE...: install Debian/Ubuntu packages without recommended extras.
apt_install() {
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
      sudo=(sudo -n)
    else
      echo "!! needs the Debian/Ubuntu packages: $*" >&2
      echo "!! run as root, or install them first: apt-get install --no-install-recommends $*" >&2
      return 1
    fi
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "!! no apt-get here: install $* with your system's package manager, then rerun" >&2
    return 1
  fi
  phase "installing $* (apt-get, log: $CI_LOGS/apt.log)"
  export DEBIAN_FRONTEND=noninteractive
  quietly apt "${sudo[@]}" apt-get update -q || return 1
  quietly apt "${sudo[@]}" apt-get install -y -q --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@"
}

# ensure_venv DIR: a virtual environment in DIR whose pip works. A half-made one (left by a
# `python3 -m venv` that failed for want of python3-venv) is removed and made again.
ensure_venv() {
  local dir=$1 py=${PYTHON:-python3}
  # Working: a real virtual environment (its own prefix) with pip installed in it.
  if [ -x "$dir/bin/python" ] && "$dir/bin/python" -m pip --version >/dev/null 2>&1 &&
    "$dir/bin/python" -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)' 2>/dev/null; then
    return 0
  fi
  if ! command -v "$py" >/dev/null 2>&1; then
    echo "!! $py not found: install Python 3.11 or later (apt-get install python3)" >&2
    return 1
  fi
  if [ -e "$dir" ]; then
    phase "repairing $dir (it exists but has no working pip): making it again"
    rm -rf "$dir"
  else
    phase "creating the virtual environment $dir"
  fi
  mkdir -p "$CI_LOGS"
  if ! "$py" -m venv "$dir" >"$CI_LOGS/venv.log" 2>&1; then
    rm -rf "$dir"
    # Debian/Ubuntu split venv's ensurepip out of python3 into python3.X-venv.
    local ver
    ver=$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    if ! grep -qi "ensurepip\|python3.*-venv" "$CI_LOGS/venv.log"; then
      echo "!! $py -m venv $dir failed; last lines of $CI_LOGS/venv.log:" >&2
      tail -n 20 "$CI_LOGS/venv.log" >&2
      return 1
    fi
    apt_install "python$ver-venv" || return 1
    quietly venv "$py" -m venv "$dir" || { rm -rf "$dir"; return 1; }
  fi
}

# pip_install DIR SPEC...: install into the virtual environment DIR, quietly.
pip_install() {
  local dir=$1
  shift
  phase "installing $* into $dir (log: $CI_LOGS/pip.log)"
  quietly pip "$dir/bin/python" -m pip install --disable-pip-version-check "$@"
}
