#!/usr/bin/env bash
# Runs the whole strata suite as local processes: a private PostgreSQL 15 and Redis 7 on free
# loopback ports, the source simulator, and every service. Used by `make up/down/demo` and by
# the test fixture.
#
#   infra/stack.sh up   --dir DIR --bin BIN_DIR [--start 2024-01-01] [--seed 42] [--lake local|s3]
#   infra/stack.sh down --dir DIR
#
# --lake s3 keeps the lake in an S3-compatible store instead of DIR/lake: s3rver (npm, from
# tests/s3) on a free port, bucket strata-lake, STRATA_LAKE_ROOT=s3://strata-lake/lake.
#
# STRATA_REDIS_CLUSTER=N (N >= 3) runs the bus on a Redis Cluster of N masters instead of one
# Redis (redis-server --cluster-enabled, redis-cli --cluster create); STRATA_REDIS_URL then
# lists every node as seeds and STRATA_REDIS_CLUSTER_PORTS holds their ports;
# STRATA_REDIS_CLUSTER_REPLICAS=R (default 0) gives each master R replicas (N*(1+R) nodes).
#
# STRATA_PG_REPLICA=1 adds a hot standby of the warehouse server (pg_basebackup -R, streaming
# replication) on a free port: STRATA_PG_REPLICA_DSN, and STRATA_QUERY_REPLICA_DSNS so the query
# service reads published answers from it.
#
# `up` writes DIR/env (shell-sourceable): STRATA_PG_DSN, STRATA_SOURCE_DSN, STRATA_REDIS_URL,
# STRATA_LAKE_ROOT, STRATA_SOURCE_HTTP, STRATA_<SERVICE>_GRPC / _METRICS, ... Logs go to DIR/logs.
set -euo pipefail

cmd=${1:-}; shift || true
DIR=""; BIN=""; START=${STRATA_SIM_START:-2024-01-01}; SEED=${STRATA_SIM_SEED:-42}; LAKE=local
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) DIR=$2; shift 2 ;;
    --bin) BIN=$2; shift 2 ;;
    --start) START=$2; shift 2 ;;
    --seed) SEED=$2; shift 2 ;;
    --lake) LAKE=$2; shift 2 ;;
    *) echo "stack.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -n "$DIR" ] || { echo "stack.sh: --dir is required" >&2; exit 2; }
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PGBIN=/usr/lib/postgresql/15/bin
SERVICES="ingest lake_export warehouse_loader quality query controller"

as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

# Distinct within a stack: the ports picked so far are kept in $DIR/run/ports.
free_port() { python3 "$ROOT/infra/free_port.py" --taken "$DIR/run/ports"; }

stop_pid() {  # stop_pid FILE: SIGTERM, wait up to 10 s, then SIGKILL
  local f=$1 pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

down() {
  [ -d "$DIR" ] || return 0
  local unclean=""
  local s
  for s in controller query quality warehouse_loader lake_export ingest source_sim; do
    stop_pid "$DIR/run/$s.pid" &
  done
  wait
  stop_pid "$DIR/run/s3rver.pid"
  for s in controller query quality warehouse_loader lake_export ingest; do
    # A service that shut down cleanly on SIGTERM says so last.
    if [ -f "$DIR/logs/$s.log" ] && ! tail -n 3 "$DIR/logs/$s.log" | grep -q '"msg":"stopped"'; then
      unclean="$unclean $s"
    fi
  done
  if [ -f "$DIR/env" ]; then
    # shellcheck disable=SC1091
    . "$DIR/env"
    redis-cli -p "$STRATA_REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
    for p in ${STRATA_REDIS_CLUSTER_PORTS:-}; do redis-cli -p "$p" shutdown nosave >/dev/null 2>&1 || true; done
  fi
  local pgdir
  pgdir=$(cat "$DIR/pgdir" 2>/dev/null || true)
  if [ -n "$pgdir" ] && [ -f "$pgdir/replica/postmaster.pid" ]; then
    as_pg "$PGBIN/pg_ctl" -D "$pgdir/replica" -m fast -w stop >/dev/null || true
  fi
  if [ -n "$pgdir" ] && [ -f "$pgdir/data/postmaster.pid" ]; then
    as_pg "$PGBIN/pg_ctl" -D "$pgdir/data" -m fast -w stop >/dev/null || true
  fi
  if [ -n "$pgdir" ]; then rm -rf "$pgdir"; fi
  echo "stack: stopped ($DIR)"
  if [ -n "$unclean" ]; then echo "stack: did not shut down cleanly:$unclean" >&2; return 1; fi
}

up() {
  [ -n "$BIN" ] || { echo "stack.sh up: --bin is required" >&2; exit 2; }
  # Taken before `down`, which sources the previous stack's env file.
  local spec=${STRATA_PIPELINE_SPEC:-$ROOT/pipelines/demo}
  down >/dev/null 2>&1 || true
  # Only this stack's own entries are replaced: DIR may hold other stacks (e.g. .strata/demo).
  mkdir -p "$DIR"
  DIR=$(cd "$DIR" && pwd)
  rm -rf "$DIR"/{run,logs,lake,redis,env,pgdir,s3}
  mkdir -p "$DIR"/{run,logs,lake,redis}
  case "$LAKE" in local|s3) ;; *) echo "stack.sh: --lake must be local or s3, got $LAKE" >&2; exit 2 ;; esac
  # PostgreSQL's files live where the postgres user can reach them even when DIR's parents are
  # private (a CI checkout under /root, say).
  local pgdir
  pgdir=$(mktemp -d /tmp/strata-pg.XXXXXX)
  echo "$pgdir" >"$DIR/pgdir"
  local pg_port redis_port sim_port webhook_port
  pg_port=$(free_port); redis_port=$(free_port); sim_port=$(free_port); webhook_port=$(free_port)

  # PostgreSQL: trust auth on loopback only; wal_level=logical so CDC can use this server too.
  if [ "$(id -u)" -eq 0 ]; then chown postgres:postgres "$pgdir"; fi
  as_pg "$PGBIN/initdb" -D "$pgdir/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$DIR/logs/initdb.log"
  as_pg "$PGBIN/pg_ctl" -D "$pgdir/data" -l "$pgdir/postgres.log" -w -t 60 start \
    -o "-p $pg_port -k $pgdir -c listen_addresses=127.0.0.1 -c wal_level=logical -c max_connections=200 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" >/dev/null
  local pg="host=127.0.0.1 port=$pg_port user=postgres"
  local s3_port=""
  if [ "$LAKE" = s3 ]; then
    s3_port=$(free_port)
    mkdir -p "$DIR/s3"
    "$ROOT/tests/s3/node_modules/.bin/s3rver" --directory "$DIR/s3" --port "$s3_port" --address 127.0.0.1 \
      --configure-bucket strata-lake --silent >"$DIR/logs/s3rver.log" 2>&1 &
    echo $! >"$DIR/run/s3rver.pid"
    for i in $(seq 1 100); do
      curl -s -o /dev/null "http://127.0.0.1:$s3_port/" && break
      [ "$i" -eq 100 ] && { echo "stack: s3rver did not start" >&2; cat "$DIR/logs/s3rver.log" >&2; exit 1; }
      sleep 0.1
    done
  fi
  psql "$pg dbname=postgres" -qAtc "CREATE DATABASE warehouse" -c "CREATE DATABASE source" >/dev/null
  local replica_port=""
  if [ "${STRATA_PG_REPLICA:-0}" = 1 ]; then
    # A hot standby streaming from the server above (initdb's trust rules admit replication
    # connections on loopback).
    replica_port=$(free_port)
    as_pg "$PGBIN/pg_basebackup" -h 127.0.0.1 -p "$pg_port" -U postgres -D "$pgdir/replica" -R -X stream --checkpoint=fast \
      >"$DIR/logs/pg_basebackup.log" 2>&1 || { echo "stack: pg_basebackup failed" >&2; cat "$DIR/logs/pg_basebackup.log" >&2; exit 1; }
    as_pg "$PGBIN/pg_ctl" -D "$pgdir/replica" -l "$pgdir/replica.log" -w -t 60 start \
      -o "-p $replica_port -k $pgdir -c listen_addresses=127.0.0.1 -c hot_standby=on -c max_connections=200" >/dev/null
  fi

  local redis_url="redis://127.0.0.1:$redis_port" cluster_ports=""
  if [ "${STRATA_REDIS_CLUSTER:-0}" -ge 3 ] 2>/dev/null; then
    # A Redis Cluster of N masters on free ports; the first is also STRATA_REDIS_PORT.
    local p nodes="" i
    cluster_ports=$redis_port
    local replicas=${STRATA_REDIS_CLUSTER_REPLICAS:-0}
    for i in $(seq 2 $((STRATA_REDIS_CLUSTER * (1 + replicas)))); do cluster_ports="$cluster_ports $(free_port)"; done
    for p in $cluster_ports; do
      mkdir -p "$DIR/redis/$p"
      redis-server --port "$p" --bind 127.0.0.1 --daemonize yes --dir "$DIR/redis/$p" --cluster-enabled yes \
        --cluster-config-file nodes.conf --cluster-node-timeout 3000 --save "" --appendonly yes \
        --appendfsync everysec --pidfile "$DIR/run/redis-$p.pid" --logfile "$DIR/logs/redis-$p.log"
      nodes="$nodes 127.0.0.1:$p"
    done
    nodes=${nodes# }
    redis_url="redis://${nodes// /,}"
    for p in $cluster_ports; do
      for _ in $(seq 1 100); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.1; done
    done
    # shellcheck disable=SC2086
    redis-cli --cluster create $nodes --cluster-replicas "$replicas" --cluster-yes >"$DIR/logs/redis-cluster.log" 2>&1 ||
      { echo "stack: redis cluster create failed" >&2; cat "$DIR/logs/redis-cluster.log" >&2; exit 1; }
    for p in $cluster_ports; do
      for i in $(seq 1 100); do
        redis-cli -p "$p" cluster info 2>/dev/null | grep -q 'cluster_state:ok' && break
        [ "$i" -eq 100 ] && { echo "stack: redis cluster node $p not ok" >&2; exit 1; }
        sleep 0.1
      done
    done
  else
    redis-server --port "$redis_port" --bind 127.0.0.1 --daemonize yes --dir "$DIR/redis" \
      --save "" --appendonly yes --appendfsync everysec --pidfile "$DIR/run/redis.pid" --logfile "$DIR/logs/redis.log"
  fi

  {
    echo "# strata local stack — source me: . $DIR/env"
    echo "export STRATA_PG_DSN='$pg dbname=warehouse'"
    echo "export STRATA_SOURCE_DSN='$pg dbname=source'"
    echo "export STRATA_PG_ADMIN_DSN='$pg'"
    echo "export STRATA_PG_PORT=$pg_port"
    if [ -n "$replica_port" ]; then
      echo "export STRATA_PG_REPLICA_PORT=$replica_port"
      echo "export STRATA_PG_REPLICA_DSN='host=127.0.0.1 port=$replica_port user=postgres dbname=warehouse'"
      echo "export STRATA_QUERY_REPLICA_DSNS='host=127.0.0.1 port=$replica_port user=postgres dbname=warehouse'"
    fi
    echo "export STRATA_REDIS_URL=$redis_url"
    echo "export STRATA_REDIS_PORT=$redis_port"
    echo "export STRATA_REDIS_CLUSTER_PORTS='$cluster_ports'"
    if [ "$LAKE" = s3 ]; then
      echo "export STRATA_LAKE_ROOT=s3://strata-lake/lake"
      echo "export STRATA_S3_ENDPOINT=http://127.0.0.1:$s3_port"
      echo "export STRATA_S3_PORT=$s3_port"
      echo "export AWS_ACCESS_KEY_ID=S3RVER AWS_SECRET_ACCESS_KEY=S3RVER"
    else
      echo "export STRATA_LAKE_ROOT=$DIR/lake"
    fi
    echo "export STRATA_PIPELINE_SPEC=$spec"
    echo "export STRATA_SOURCE_HTTP=http://127.0.0.1:$sim_port"
    echo "export STRATA_WEBHOOK_URL=http://127.0.0.1:$webhook_port/hook"
    echo "export STRATA_WEBHOOK_PORT=$webhook_port"
    echo "export STRATA_STACK_DIR=$DIR"
    echo "export STRATA_RECLAIM_IDLE_MS=${STRATA_RECLAIM_IDLE_MS:-3000}"
    # Dates are run by hand here (stratactl run / backfill): the spec's schedule stays idle.
    echo "export STRATA_SCHEDULES=${STRATA_SCHEDULES:-false}"
    echo "export STRATA_BIN=$(cd "$BIN" && pwd)"
    for s in $SERVICES; do
      S=$(echo "$s" | tr a-z A-Z)
      echo "export STRATA_${S}_GRPC=127.0.0.1:$(free_port)"
      echo "export STRATA_${S}_METRICS=127.0.0.1:$(free_port)"
    done
    echo "export STRATA_QUERY_HTTP=127.0.0.1:$(free_port)"
    echo "export STRATA_CONTROLLER_HTTP=127.0.0.1:$(free_port)"
    # API tokens of this private stack: one per role (random per stack, never reused).
    local analyst viewer
    analyst=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
    viewer=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
    echo "export STRATA_QUERY_TOKENS=$analyst:analyst,$viewer:viewer"
    echo "export STRATA_QUERY_TOKEN=$analyst"
    echo "export STRATA_QUERY_VIEWER_TOKEN=$viewer"
    echo "export STRATA_QUERY_RATE_LIMIT_RPS=${STRATA_QUERY_RATE_LIMIT_RPS:-200}"
    # The warehouse role dashboards log in as gets a password (set by the loader).
    echo "export STRATA_ANALYST_PASSWORD=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    # The simulated reviews API's bearer token, shared by the simulator and ingest.
    echo "export STRATA_REVIEWS_TOKEN=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  } >"$DIR/env"
  # shellcheck disable=SC1091
  . "$DIR/env"

  "$BIN/strata-source-sim" --seed "$SEED" init --start "$START" >/dev/null
  "$BIN/strata-source-sim" --seed "$SEED" serve --listen "127.0.0.1:$sim_port" >"$DIR/logs/source_sim.log" 2>&1 &
  echo $! >"$DIR/run/source_sim.pid"

  local bin
  for s in $SERVICES; do
    bin="$BIN/strata-$(echo "$s" | tr _ -)"
    "$bin" >"$DIR/logs/$s.log" 2>&1 &
    echo $! >"$DIR/run/$s.pid"
  done
  for s in $SERVICES; do
    for i in $(seq 1 300); do
      grep -q '"msg":"started grpc=' "$DIR/logs/$s.log" 2>/dev/null && break
      if ! kill -0 "$(cat "$DIR/run/$s.pid")" 2>/dev/null || [ "$i" -eq 300 ]; then
        echo "stack: $s did not start; its log:" >&2; cat "$DIR/logs/$s.log" >&2; exit 1
      fi
      sleep 0.1
    done
  done
  for i in $(seq 1 100); do curl -sf "$STRATA_SOURCE_HTTP/health" >/dev/null && break; sleep 0.1; done
  echo "stack: up — . $DIR/env"
}

case "$cmd" in
  up) up ;;
  down) down ;;
  *) echo "usage: stack.sh up|down --dir DIR [--bin BIN_DIR]" >&2; exit 2 ;;
esac
