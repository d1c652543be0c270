#!/usr/bin/env bash
# Install (when missing) and start the servers the test suite needs, then print the environment
# that points the tests at them. Usage: eval "$(bash .ci/services.sh start)" / bash .ci/services.sh stop
# Servers: memcached on 127.0.0.1:11311 and :11312, a throwaway PostgreSQL cluster on :55432.
# Progress goes to stderr, one line per phase (apt-get output to .ci/logs/apt.log); stdout
# carries only the export lines.
set -euo pipefail

STATE=${STOCKPYLE_SERVICES_DIR:-/tmp/stockpyle-services}
read -r -a MC_PORTS <<<"${STOCKPYLE_MEMCACHED_PORTS:-11311 11312}"
PG_PORT=${STOCKPYLE_POSTGRES_PORT:-55432}

. "$(dirname "$0")/lib.sh"

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

need_apt() {
  local missing=()
  command -v memcached >/dev/null 2>&1 || missing+=(memcached)
  [ -n "$(pg_bin)" ] || missing+=(postgresql)
  if [ ${#missing[@]} -gt 0 ]; then
    if [[ " ${missing[*]} " == *" postgresql "* ]] && [ ! -e /etc/postgresql-common/createcluster.conf ]; then
      # We run our own throwaway cluster: keep the package from creating and starting a
      # "main" cluster on port 5432 that nothing would ever stop.
      mkdir -p /etc/postgresql-common 2>/dev/null &&
        echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.conf || true
    fi
    apt_install "${missing[@]}"
  fi
}

wait_port() {  # wait_port PORT: until something listens there (at most ~10 s)
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on port $1" >&2
  return 1
}

start() {
  need_apt
  mkdir -p "$STATE"
  cd /  # the postgres user cannot read root's working directory
  for port in "${MC_PORTS[@]}"; do
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      memcached -u root -l 127.0.0.1 -p "$port" -U 0 -m 64 -c 4096 -d -P "$STATE/memcached-$port.pid"
    fi
    wait_port "$port"
  done
  phase "memcached $(memcached -V | cut -d' ' -f2) on 127.0.0.1:${MC_PORTS[0]} and :${MC_PORTS[1]}"
  if ! (exec 3<>"/dev/tcp/127.0.0.1/$PG_PORT") 2>/dev/null; then
    local bin data
    bin=$(pg_bin)
    data="$STATE/pgdata"
    rm -rf "$data"
    mkdir -p "$data" && chown postgres:postgres "$data" "$STATE"
    runuser -u postgres -- "$bin/initdb" -A trust --no-sync -U postgres -D "$data" >/dev/null
    if ! runuser -u postgres -- "$bin/pg_ctl" -D "$data" -l "$STATE/pg.log" -w \
      -o "-c listen_addresses=127.0.0.1 -c port=$PG_PORT -c fsync=off -c unix_socket_directories=$STATE" \
      start >/dev/null 2>&1; then
      echo "!! PostgreSQL did not start on 127.0.0.1:$PG_PORT; last lines of $STATE/pg.log:" >&2
      tail -n 5 "$STATE/pg.log" >&2
      echo "!! port taken? pick another with STOCKPYLE_POSTGRES_PORT=... (same for" \
        "'bash .ci/services.sh stop'); memcached is left running: stop it with that command" >&2
      exit 1
    fi
    runuser -u postgres -- "$bin/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres stockpyle_test
  fi
  wait_port "$PG_PORT"
  phase "PostgreSQL $(basename "$(dirname "$(pg_bin)")") on 127.0.0.1:$PG_PORT (data in $STATE)"
  echo "export STOCKPYLE_MEMCACHED=127.0.0.1:${MC_PORTS[0]}"
  echo "export STOCKPYLE_MEMCACHED_2=127.0.0.1:${MC_PORTS[1]}"
  echo "export STOCKPYLE_POSTGRES_URL=postgresql+psycopg://postgres@127.0.0.1:$PG_PORT/stockpyle_test"
}

stop() {
  cd /
  for port in "${MC_PORTS[@]}"; do
    [ -f "$STATE/memcached-$port.pid" ] && kill "$(cat "$STATE/memcached-$port.pid")" 2>/dev/null || true
  done
  if [ -d "$STATE/pgdata" ]; then
    runuser -u postgres -- "$(pg_bin)/pg_ctl" -D "$STATE/pgdata" -m immediate stop >/dev/null 2>&1 || true
  fi
  rm -rf "$STATE/pgdata" "$STATE"/memcached-*.pid "$STATE/pg.log"
  rmdir "$STATE" 2>/dev/null || true
  phase "stopped memcached (:${MC_PORTS[*]}) and PostgreSQL (:$PG_PORT)"
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
