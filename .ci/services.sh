#!/usr/bin/env bash
# Install (when missing) and start the servers the test suite needs, then print the environment
# that points the tests at them. Usage: eval "$(bash .ci/services.sh start)" / bash .ci/services.sh stop
# Servers: memcached on 127.0.0.1:11311 and :11312, a throwaway PostgreSQL cluster on :55432.
set -euo pipefail

STATE=${STOCKPYLE_SERVICES_DIR:-/tmp/stockpyle-services}
MC_PORTS=(11311 11312)
PG_PORT=55432

need_apt() {
  local missing=()
  command -v memcached >/dev/null 2>&1 || missing+=(memcached)
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
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
  for port in "${MC_PORTS[@]}"; do
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      memcached -u root -l 127.0.0.1 -p "$port" -U 0 -m 64 -d -P "$STATE/memcached-$port.pid"
    fi
    wait_port "$port"
  done
  if ! (exec 3<>"/dev/tcp/127.0.0.1/$PG_PORT") 2>/dev/null; then
    local bin data
    bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    data="$STATE/pgdata"
    rm -rf "$data"
    mkdir -p "$data" && chown postgres:postgres "$data" "$STATE"
    runuser -u postgres -- "$bin/initdb" -A trust --no-sync -U postgres -D "$data" >/dev/null
    runuser -u postgres -- "$bin/pg_ctl" -D "$data" -l "$STATE/pg.log" -w \
      -o "-c listen_addresses=127.0.0.1 -c port=$PG_PORT -c fsync=off -c unix_socket_directories=$STATE" start >/dev/null
    runuser -u postgres -- "$bin/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres stockpyle_test
  fi
  wait_port "$PG_PORT"
  echo "export STOCKPYLE_MEMCACHED=127.0.0.1:${MC_PORTS[0]}"
  echo "export STOCKPYLE_MEMCACHED_2=127.0.0.1:${MC_PORTS[1]}"
  echo "export STOCKPYLE_POSTGRES_URL=postgresql+psycopg://postgres@127.0.0.1:$PG_PORT/stockpyle_test"
}

stop() {
  for port in "${MC_PORTS[@]}"; do
    [ -f "$STATE/memcached-$port.pid" ] && kill "$(cat "$STATE/memcached-$port.pid")" 2>/dev/null || true
  done
  if [ -d "$STATE/pgdata" ]; then
    bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    runuser -u postgres -- "$bin/pg_ctl" -D "$STATE/pgdata" -m immediate stop >/dev/null 2>&1 || true
  fi
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
