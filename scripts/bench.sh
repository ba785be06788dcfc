#!/usr/bin/env bash
# The comparison benchmark of issue 7 (see BENCHMARKS.md): builds the benches in release mode,
# starts Redis, etcd and PostgreSQL from Debian's packages (installing them if missing) on free
# loopback ports with their data in a temporary directory, runs the same workload against each
# and against leasehold (HTTP server and library), prints one table and the goals, then the CLI
# start-up bench, and stops everything it started.
#
#   scripts/bench.sh                    full run, a few minutes
#   scripts/bench.sh --smoke            every part for a moment, for CI (figures meaningless)
#   scripts/bench.sh --only leasehold   leasehold alone: needs no other service
#   scripts/bench.sh --smoke --dev      the same in the dev profile, which `cargo build
#                                       --all-targets` has already built: for CI
#
# Other arguments go to the bench binary (`cargo bench --bench compare -- --help`).
set -euo pipefail
cd "$(dirname "$0")/.."

SMOKE=0
DEV=0
ONLY=""
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SMOKE=1; ARGS+=("$1") ;;
    --dev) DEV=1 ;;
    --only) ONLY="${2:?--only needs a list}"; ARGS+=("$1" "$2"); shift ;;
    --only=*) ONLY="${1#--only=}"; ARGS+=("$1") ;;
    *) ARGS+=("$1") ;;
  esac
  shift
done

# Whether the comma-separated --only list asks for PART (an empty list asks for everything).
wants() {
  [ -z "$ONLY" ] && return 0
  case ",$ONLY," in *",$1,"*) return 0 ;; esac
  return 1
}

log() { echo "bench: $*" >&2; }

APT_UPDATED=0
# install_missing COMMAND PACKAGE: installs the Debian package when the command is missing.
install_missing() {
  command -v "$1" >/dev/null 2>&1 && return 0
  install_package "$2"
  command -v "$1" >/dev/null
}

install_package() {
  if [ "$(id -u)" -ne 0 ]; then
    log "the Debian package $1 is missing and this is not root: install it, or use --only leasehold"
    exit 1
  fi
  log "installing $1"
  if [ "$APT_UPDATED" -eq 0 ]; then
    apt-get update -qq
    APT_UPDATED=1
  fi
  # Keep the package's own service from starting (on machines with an init that would): the
  # bench starts its own instance on a free port.
  local policy=/usr/sbin/policy-rc.d created=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 755 "$policy" && created=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null
  if [ "$created" -eq 1 ]; then rm -f "$policy"; fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# wait_for WHAT COMMAND...: retries the command for up to 20 s.
wait_for() {
  local what="$1"; shift
  for _ in $(seq 200); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  log "$what did not come up"
  return 1
}

WORK=$(mktemp -d /tmp/leasehold-bench.XXXXXX)
chmod 755 "$WORK"
PIDS=()
PG_STOP=()
BENCH_PGID=""
# Stops Redis, etcd and PostgreSQL (whichever were started), each once.
stop_services() {
  local pid
  if [ "${#PG_STOP[@]}" -gt 0 ]; then
    "${PG_STOP[@]}" >/dev/null 2>&1 || true
    PG_STOP=()
  fi
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  PIDS=()
}
stop_all() {
  if [ -n "$BENCH_PGID" ]; then
    kill -TERM -- "-$BENCH_PGID" 2>/dev/null || true
    wait "$BENCH_PGID" 2>/dev/null || true
  fi
  stop_services
  rm -rf "$WORK"
}
trap stop_all EXIT
trap 'exit 130' INT TERM
# Every database of the run (leasehold's, the SQLite floor's) goes here too, on the same disk.
export TMPDIR="$WORK"

# run_bench COMMAND...: runs a bench in a process group of its own and waits for it, so that an
# interrupted run stops it (cargo, the bench, and the bench's server child) from stop_all.
run_bench() {
  local status=0
  setsid "$@" &
  BENCH_PGID=$!
  wait "$BENCH_PGID" || status=$?
  BENCH_PGID=""
  return "$status"
}

log "machine: $(nproc) cores, $(free -m | awk '/^Mem:/ {print $2}') MiB; load before: $(cut -d' ' -f1-3 /proc/loadavg)"
# bench_cargo BENCH ARGS...: runs one bench binary, built in release (`cargo bench`) or, with
# --dev, in the dev profile (`cargo test` runs a harness-less bench as a plain program).
bench_cargo() {
  local bench="$1"; shift
  if [ "$DEV" -eq 1 ]; then
    run_bench cargo test --locked --bench "$bench" -- "$@"
  else
    run_bench cargo bench --locked --bench "$bench" -- "$@"
  fi
}

if [ "$DEV" -eq 1 ]; then
  log "building the benches (dev profile: figures are meaningless)"
  run_bench cargo build --locked --bench compare --bench cli_acquire
else
  log "building the benches (release)"
  run_bench cargo bench --locked --no-run --bench compare --bench cli_acquire
fi

TARGETS=()
if wants redis; then
  install_missing redis-server redis-server
  REDIS_PORT=$(free_port)
  mkdir "$WORK/redis"
  # No persistence at all, as in the issue's figure: nothing is durable.
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$WORK/redis" --logfile "$WORK/redis/redis.log" --daemonize no &
  PIDS+=($!)
  wait_for "redis-server on port $REDIS_PORT" redis-cli -p "$REDIS_PORT" ping
  log "Redis $(redis-server --version | awk '{print $3}' | cut -d= -f2) on 127.0.0.1:$REDIS_PORT"
  TARGETS+=(--redis "127.0.0.1:$REDIS_PORT")
fi
if wants etcd; then
  install_missing etcd etcd-server
  ETCD_PORT=$(free_port)
  PEER_PORT=$(free_port)
  # A single-member cluster with its defaults (every write committed to its WAL with fsync).
  etcd --name bench --data-dir "$WORK/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$PEER_PORT" \
    --initial-cluster "bench=http://127.0.0.1:$PEER_PORT" \
    --logger zap --log-level error > "$WORK/etcd.log" 2>&1 &
  PIDS+=($!)
  if command -v curl >/dev/null 2>&1; then
    wait_for "etcd on port $ETCD_PORT" curl -fsS "http://127.0.0.1:$ETCD_PORT/health"
  else
    wait_for "etcd on port $ETCD_PORT" bash -c "</dev/tcp/127.0.0.1/$ETCD_PORT"
  fi
  log "etcd $(etcd --version | awk '/etcd Version/ {print $3}') on 127.0.0.1:$ETCD_PORT"
  TARGETS+=(--etcd "127.0.0.1:$ETCD_PORT")
fi

if wants postgres; then
  find_pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
  PG_BIN=$(find_pg_bin || true)
  if [ -z "$PG_BIN" ] || [ ! -x "$PG_BIN/initdb" ]; then
    install_package postgresql
    PG_BIN=$(find_pg_bin)
  fi
  # initdb refuses to run as root: then the cluster belongs to the postgres user.
  RUN_AS=()
  if [ "$(id -u)" -eq 0 ]; then
    RUN_AS=(runuser -u postgres --)
  fi
  mkdir "$WORK/pg"
  if [ "$(id -u)" -eq 0 ]; then chown postgres "$WORK/pg"; fi
  PG_PORT=$(free_port)
  "${RUN_AS[@]}" "$PG_BIN/initdb" -D "$WORK/pg/data" -U postgres -A trust >/dev/null
  # The defaults, fsync and synchronous_commit on: every acknowledged commit is durable.
  "${RUN_AS[@]}" "$PG_BIN/pg_ctl" -D "$WORK/pg/data" -l "$WORK/pg/server.log" -w -o \
    "-p $PG_PORT -k $WORK/pg -c listen_addresses=127.0.0.1 -c max_connections=200" \
    start >/dev/null || { cat "$WORK/pg/server.log" >&2; exit 1; }
  PG_STOP=("${RUN_AS[@]}" "$PG_BIN/pg_ctl" -D "$WORK/pg/data" -m fast stop)
  log "PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PG_PORT"
  TARGETS+=(--postgres "postgres://postgres@127.0.0.1:$PG_PORT/postgres")
fi

bench_cargo compare "${ARGS[@]}" "${TARGETS[@]}"

if wants leasehold; then
  # The CLI bench needs none of the other services: stop them (PostgreSQL would otherwise
  # vacuum and checkpoint what the run above left, beside the CLI), then let the kernel write
  # back what the run left (its databases are deleted by now), so that the CLI's fsyncs do not
  # queue behind it.
  stop_services
  sync
  echo
  echo "## CLI (benches/cli_acquire.rs)"
  echo
  if [ "$SMOKE" -eq 1 ]; then
    bench_cargo cli_acquire --runs 5 --leases 1000
  else
    bench_cargo cli_acquire --runs 100
  fi
fi
log "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
