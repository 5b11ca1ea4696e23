#!/usr/bin/env bash
# A TLS-only Redis for the anykv rediss:// tests (store/tests/conformance_rediss.rs).
#
#   scripts/redis-tls.sh start   generate a throw-away CA + server certificate (openssl)
#                                into the services state dir and (re)start redis-server
#                                with TLS only, on a free loopback port; prints the env
#   scripts/redis-tls.sh stop    stop it (harmless if not running)
#   scripts/redis-tls.sh status  is it up?
#   scripts/redis-tls.sh env     print `export ANYKV_TEST_REDISS_URL=...` (for eval);
#                                prints nothing when the server is not running
#
# Meant to be called by scripts/services.sh from its start/stop/env commands.
# `start` when the server is already running and healthy is a no-op (apart from
# printing the env). Certificates are regenerated on every real start, so no key
# material outlives a test run's server.
#
# Tunables (environment):
#   ANYKV_SERVICES_DIR   state dir shared with services.sh (default /tmp/anykv-services)
#   ANYKV_TEST_REDIS_BIN redis-server binary (default: redis-server on PATH)
#   ANYKV_REDIS_TLS_PORT first port to try (default 16390; the next 100 are tried too)
#   ANYKV_SERVICES_WAIT  seconds to wait for the server to become ready (default 90)
set -euo pipefail

STATE_DIR="${ANYKV_SERVICES_DIR:-/tmp/anykv-services}"
DIR="$STATE_DIR/redis-tls"
HOST=127.0.0.1
FIRST_PORT="${ANYKV_REDIS_TLS_PORT:-16390}"
WAIT_SECS="${ANYKV_SERVICES_WAIT:-90}"

PID_FILE="$DIR/redis-tls.pid"
PORT_FILE="$DIR/port"
LOG_FILE="$DIR/redis-tls.log"
CA_CRT="$DIR/ca.crt"
CA_KEY="$DIR/ca.key"
SRV_CRT="$DIR/server.crt"
SRV_KEY="$DIR/server.key"

log() { printf '[redis-tls] %s\n' "$*" >&2; }
die() { printf '[redis-tls] ERROR: %s\n' "$*" >&2; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }

redis_bin() {
  if [[ -n ${ANYKV_TEST_REDIS_BIN:-} ]]; then echo "$ANYKV_TEST_REDIS_BIN"; return; fi
  command -v redis-server 2>/dev/null || echo /usr/bin/redis-server
}
redis_cli() { command -v redis-cli 2>/dev/null || echo /usr/bin/redis-cli; }

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# Alive and not a zombie.
alive() {
  local st
  kill -0 "$1" 2>/dev/null || return 1
  st=$(sed -e 's/.*) //' -e 's/ .*//' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ -n $st && $st != Z && $st != X ]]
}

# Prints the pid if the pid file points to our live TLS redis-server (redis-server
# rewrites its process title to "redis-server HOST:PORT", which guards against pid reuse).
our_pid() {
  local pid port cmdline
  [[ -f $PID_FILE ]] || return 1
  pid=$(tr -dc '0-9' <"$PID_FILE")
  port=$(our_port) || return 1
  [[ -n $pid && -n $port ]] && alive "$pid" || return 1
  cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
  [[ $cmdline == *redis-server* && $cmdline == *":$port"* ]] || return 1
  echo "$pid"
}

our_port() {
  [[ -f $PORT_FILE ]] || return 1
  tr -dc '0-9' <"$PORT_FILE"
}

ready() {
  local port=$1
  [[ $("$(redis_cli)" -h "$HOST" -p "$port" --tls --cacert "$CA_CRT" ping 2>/dev/null) == PONG ]]
}

running_ok() {
  local port
  our_pid >/dev/null || return 1
  port=$(our_port) || return 1
  ready "$port"
}

gen_certs() {
  have openssl || die "openssl is needed to generate the test certificates"
  local tmp
  tmp=$(mktemp -d "$DIR/certs.XXXXXX")
  (
    cd "$tmp"
    openssl req -x509 -new -nodes -days 30 \
      -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
      -keyout ca.key -out ca.crt -subj "/CN=anykv test CA" \
      -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    openssl req -new -nodes \
      -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
      -keyout server.key -out server.csr -subj "/CN=localhost" 2>/dev/null
    cat >ext.cnf <<EOF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost
EOF
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
      -days 30 -out server.crt -extfile ext.cnf 2>/dev/null
  ) || { rm -rf "$tmp"; die "openssl failed to generate the test certificates"; }
  chmod 600 "$tmp"/*.key
  mv "$tmp/ca.crt" "$CA_CRT"; mv "$tmp/ca.key" "$CA_KEY"
  mv "$tmp/server.crt" "$SRV_CRT"; mv "$tmp/server.key" "$SRV_KEY"
  rm -rf "$tmp"
}

free_port() {
  local p
  for ((p = FIRST_PORT; p < FIRST_PORT + 100; p++)); do
    if ! port_open "$p"; then echo "$p"; return 0; fi
  done
  die "no free port in $FIRST_PORT..$((FIRST_PORT + 99))"
}

cmd_stop() {
  local pid i
  if pid=$(our_pid); then
    log "stopping TLS redis-server (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
  fi
  rm -f "$PID_FILE" "$PORT_FILE"
}

cmd_start() {
  mkdir -p "$DIR"
  if running_ok; then
    log "TLS redis-server already running (pid $(our_pid), port $(our_port))"
    cmd_env
    return 0
  fi
  cmd_stop
  [[ -x $(redis_bin) ]] || die "redis-server not found: $(redis_bin) (run scripts/services.sh install)"
  gen_certs
  local port pid deadline
  port=$(free_port)
  rm -rf "$DIR/data"; mkdir -p "$DIR/data"
  : >"$LOG_FILE"
  setsid "$(redis_bin)" --bind "$HOST" --port 0 --tls-port "$port" \
    --tls-cert-file "$SRV_CRT" --tls-key-file "$SRV_KEY" \
    --tls-ca-cert-file "$CA_CRT" --tls-auth-clients no \
    --save '' --appendonly no --daemonize no --dir "$DIR/data" \
    --protected-mode no --loglevel notice >>"$LOG_FILE" 2>&1 </dev/null 9>&- &
  pid=$!
  echo "$pid" >"$PID_FILE"
  echo "$port" >"$PORT_FILE"
  deadline=$((SECONDS + WAIT_SECS))
  until ready "$port"; do
    if ! alive "$pid"; then
      tail -n 20 "$LOG_FILE" >&2 || true
      die "TLS redis-server exited during start-up (log: $LOG_FILE)"
    fi
    if ((SECONDS >= deadline)); then
      die "TLS redis-server not ready after ${WAIT_SECS}s (log: $LOG_FILE)"
    fi
    sleep 0.2
  done
  log "TLS redis-server ready (pid $pid, port $port, log $LOG_FILE)"
  cmd_env
}

cmd_status() {
  if running_ok; then
    printf '%-10s %-10s pid %-8s %s:%s (TLS)\n' redis-tls ready "$(our_pid)" "$HOST" "$(our_port)"
  else
    printf '%-10s %-10s\n' redis-tls stopped
    return 1
  fi
}

cmd_env() {
  local port
  if our_pid >/dev/null && port=$(our_port); then
    echo "export ANYKV_TEST_REDISS_URL=rediss://$HOST:$port?ca_file=$CA_CRT"
  fi
}

case ${1:-} in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  env) cmd_env ;;
  *) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
