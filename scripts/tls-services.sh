#!/usr/bin/env bash
# TLS servers that verify client certificates, for the anykv TLS tests
# (store/tests/conformance_{etcd_tls,consul_tls,redis_mtls}.rs, store/tests/tls.rs).
#
#   scripts/tls-services.sh start   generate a throw-away CA, a server certificate
#                                   (IP:127.0.0.1, DNS:localhost) and a client
#                                   certificate (openssl), then start whichever of
#                                   these is not running and healthy:
#                                     etcd    --client-cert-auth      127.0.0.1:12479 (peer 12480)
#                                     consul  verify_incoming_https   127.0.0.1:18511 (HTTPS only;
#                                             server/serf ports 18310-18312)
#                                     redis   tls-auth-clients yes    127.0.0.1:16480 (TLS only)
#   scripts/tls-services.sh stop    stop them (harmless if not running)
#   scripts/tls-services.sh status  which ones are up
#   scripts/tls-services.sh env     print ANYKV_TEST_{ETCD_TLS,CONSUL_TLS,REDIS_MTLS}_URL
#                                   exports for the running ones, plus ANYKV_TEST_TLS_DIR
#
# Meant to be called by scripts/services.sh from its start/stop/status/env
# commands. `start` when everything is running and healthy is a no-op apart
# from printing the env. The certificates are kept while any of the servers
# runs (they all trust the one CA) and regenerated when none does.
#
# Tunables (environment):
#   ANYKV_SERVICES_DIR   state dir shared with services.sh (default /tmp/anykv-services)
#   ANYKV_TEST_REDIS_BIN, ANYKV_TEST_ETCD_BIN, ANYKV_TEST_CONSUL_BIN   the binaries
#   ANYKV_SERVICES_WAIT  seconds to wait for each server to become ready (default 90)
set -euo pipefail

STATE_DIR="${ANYKV_SERVICES_DIR:-/tmp/anykv-services}"
DIR="$STATE_DIR/tls"
CERTS="$DIR/certs"
HOST=127.0.0.1
WAIT_SECS="${ANYKV_SERVICES_WAIT:-90}"

ETCD_PORT=12479
ETCD_PEER_PORT=12480
CONSUL_HTTPS_PORT=18511
CONSUL_SERVER_PORT=18310
CONSUL_SERF_LAN_PORT=18311
CONSUL_SERF_WAN_PORT=18312
REDIS_PORT=16480

INSTANCES=(etcd consul redis)

CA="$CERTS/ca.crt"
SRV_CRT="$CERTS/server.crt"
SRV_KEY="$CERTS/server.key"
CLI_CRT="$CERTS/client.crt"
CLI_KEY="$CERTS/client.key"

log() { printf '[tls-services] %s\n' "$*" >&2; }
die() { printf '[tls-services] ERROR: %s\n' "$*" >&2; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }

redis_bin() { echo "${ANYKV_TEST_REDIS_BIN:-$(command -v redis-server 2>/dev/null || echo /usr/bin/redis-server)}"; }
redis_cli() { command -v redis-cli 2>/dev/null || echo /usr/bin/redis-cli; }
etcd_bin() { echo "${ANYKV_TEST_ETCD_BIN:-/usr/bin/etcd}"; }
consul_bin() { echo "${ANYKV_TEST_CONSUL_BIN:-/opt/anykv-tools/consul/usr/bin/consul}"; }

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

alive() {
  local st
  kill -0 "$1" 2>/dev/null || return 1
  st=$(sed -e 's/.*) //' -e 's/ .*//' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ -n $st && $st != Z && $st != X ]]
}

pid_file() { echo "$DIR/$1.pid"; }
log_file() { echo "$DIR/$1.log"; }

# What the instance's command line contains (guards against pid reuse).
cmd_marker() {
  case $1 in
    etcd) echo "$DIR/etcd" ;;
    consul) echo "$DIR/consul" ;;
    redis) echo ":$REDIS_PORT" ;;
  esac
}

ports_of() {
  case $1 in
    etcd) echo "$ETCD_PORT $ETCD_PEER_PORT" ;;
    consul) echo "$CONSUL_HTTPS_PORT $CONSUL_SERVER_PORT $CONSUL_SERF_LAN_PORT $CONSUL_SERF_WAN_PORT" ;;
    redis) echo "$REDIS_PORT" ;;
  esac
}

our_pid() {
  local f pid cmdline
  f=$(pid_file "$1")
  [[ -f $f ]] || return 1
  pid=$(tr -dc '0-9' <"$f")
  [[ -n $pid ]] && alive "$pid" || return 1
  cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
  [[ $cmdline == *"$(cmd_marker "$1")"* ]] || return 1
  echo "$pid"
}

curl_mtls() {
  curl -fsS --max-time 3 --cacert "$CA" --cert "$CLI_CRT" --key "$CLI_KEY" "$1" 2>/dev/null
}

ready() {
  [[ -f $CA && -f $CLI_CRT && -f $CLI_KEY ]] || return 1
  case $1 in
    etcd)
      [[ $(curl_mtls "https://$HOST:$ETCD_PORT/health") == *'"health":"true"'* ]] ;;
    consul)
      local leader
      leader=$(curl_mtls "https://$HOST:$CONSUL_HTTPS_PORT/v1/status/leader") || return 1
      [[ -n $leader && $leader != '""' ]] || return 1
      [[ $(curl_mtls "https://$HOST:$CONSUL_HTTPS_PORT/v1/catalog/node/anykv-test-tls") == *'"Node"'* ]] ;;
    redis)
      [[ $(timeout 5 "$(redis_cli)" -h "$HOST" -p "$REDIS_PORT" --tls --cacert "$CA" \
             --cert "$CLI_CRT" --key "$CLI_KEY" ping 2>/dev/null) == PONG ]] ;;
  esac
}

running_ok() { our_pid "$1" >/dev/null && ready "$1"; }

gen_certs() {
  have openssl || die "openssl is needed to generate the test certificates"
  mkdir -p "$DIR"
  local tmp
  tmp=$(mktemp -d "$DIR/certs.XXXXXX")
  (
    cd "$tmp"
    local ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
    openssl req -x509 -new "${ec[@]}" -days 30 \
      -keyout ca.key -out ca.crt -subj "/CN=anykv TLS test CA" \
      -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    openssl req -new "${ec[@]}" -keyout server.key -out server.csr -subj "/CN=localhost" 2>/dev/null
    printf '%s\n' "basicConstraints=critical,CA:FALSE" \
      "keyUsage=critical,digitalSignature,keyEncipherment" \
      "extendedKeyUsage=serverAuth,clientAuth" \
      "subjectAltName=IP:127.0.0.1,DNS:localhost" >server.ext
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
      -days 30 -out server.crt -extfile server.ext 2>/dev/null
    openssl req -new "${ec[@]}" -keyout client.key -out client.csr -subj "/CN=anykv test client" 2>/dev/null
    printf '%s\n' "basicConstraints=critical,CA:FALSE" \
      "keyUsage=critical,digitalSignature,keyEncipherment" \
      "extendedKeyUsage=clientAuth" >client.ext
    openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
      -days 30 -out client.crt -extfile client.ext 2>/dev/null
    rm -f ./*.csr ./*.ext ./*.srl
    chmod 600 ./*.key
  ) || { rm -rf "$tmp"; die "openssl failed to generate the test certificates"; }
  rm -rf "$CERTS"
  mv "$tmp" "$CERTS"
}

spawn() {
  local name=$1; shift
  : >"$(log_file "$name")"
  setsid "$@" >>"$(log_file "$name")" 2>&1 </dev/null 9>&- &
  echo "$!" >"$(pid_file "$name")"
}

start_etcd() {
  local d="$DIR/etcd"
  rm -rf "$d"; mkdir -p "$d"; chmod 700 "$d"
  spawn etcd "$(etcd_bin)" --name anykv-tls --data-dir "$d/data" \
    --listen-client-urls "https://$HOST:$ETCD_PORT" \
    --advertise-client-urls "https://$HOST:$ETCD_PORT" \
    --listen-peer-urls "http://$HOST:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://$HOST:$ETCD_PEER_PORT" \
    --initial-cluster "anykv-tls=http://$HOST:$ETCD_PEER_PORT" \
    --initial-cluster-state new --initial-cluster-token anykv-test-tls \
    --cert-file "$SRV_CRT" --key-file "$SRV_KEY" \
    --trusted-ca-file "$CA" --client-cert-auth \
    --logger zap --log-outputs stderr
}

start_consul() {
  local d="$DIR/consul"
  rm -rf "$d"; mkdir -p "$d"
  cat >"$d/config.hcl" <<EOF
disable_update_check = true
ports {
  http = -1
  https = $CONSUL_HTTPS_PORT
  dns = -1
  grpc = -1
  server = $CONSUL_SERVER_PORT
  serf_lan = $CONSUL_SERF_LAN_PORT
  serf_wan = $CONSUL_SERF_WAN_PORT
}
ca_file = "$CA"
cert_file = "$SRV_CRT"
key_file = "$SRV_KEY"
verify_incoming_https = true
verify_incoming_rpc = false
verify_outgoing = false
limits {
  http_max_conns_per_client = 4096
}
EOF
  spawn consul "$(consul_bin)" agent -dev -node anykv-test-tls \
    -client "$HOST" -bind "$HOST" -advertise "$HOST" \
    -config-file "$d/config.hcl" -log-level warn
}

start_redis() {
  local d="$DIR/redis"
  rm -rf "$d"; mkdir -p "$d"
  spawn redis "$(redis_bin)" --bind "$HOST" --port 0 --tls-port "$REDIS_PORT" \
    --tls-cert-file "$SRV_CRT" --tls-key-file "$SRV_KEY" \
    --tls-ca-cert-file "$CA" --tls-auth-clients yes \
    --save '' --appendonly no --daemonize no --dir "$d" \
    --protected-mode no --loglevel notice
}

stop_one() {
  local pid i
  if pid=$(our_pid "$1"); then
    log "stopping $1 (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
  fi
  rm -f "$(pid_file "$1")"
}

wait_ready() {
  local name=$1 pid deadline
  deadline=$((SECONDS + WAIT_SECS))
  until ready "$name"; do
    pid=$(tr -dc '0-9' <"$(pid_file "$name")" 2>/dev/null || true)
    if [[ -z $pid ]] || ! alive "$pid"; then
      tail -n 30 "$(log_file "$name")" >&2 || true
      die "TLS $name exited during start-up (log: $(log_file "$name"))"
    fi
    if ((SECONDS >= deadline)); then
      tail -n 30 "$(log_file "$name")" >&2 || true
      die "TLS $name not ready after ${WAIT_SECS}s (log: $(log_file "$name"))"
    fi
    sleep 0.2
  done
}

cmd_start() {
  mkdir -p "$DIR"
  local name port any_running=0
  local -a todo=()
  for name in "${INSTANCES[@]}"; do
    if running_ok "$name"; then
      any_running=1
    else
      todo+=("$name")
    fi
  done
  if [[ ${#todo[@]} -eq 0 ]]; then
    log "TLS servers already running"
    cmd_env
    return 0
  fi
  for name in "${todo[@]}"; do stop_one "$name"; done
  for name in "${todo[@]}"; do
    for port in $(ports_of "$name"); do
      port_open "$port" && die "port $HOST:$port needed by the TLS $name is in use"
    done
  done
  # The running servers trust the CA on disk: keep it while one of them runs.
  if [[ $any_running -eq 0 || ! -f $CA || ! -f $SRV_KEY || ! -f $CLI_KEY ]]; then
    if [[ $any_running -eq 1 ]]; then
      for name in "${INSTANCES[@]}"; do stop_one "$name"; done
      todo=("${INSTANCES[@]}")
    fi
    gen_certs
  fi
  for name in "${todo[@]}"; do
    log "starting TLS $name"
    "start_$name"
  done
  for name in "${todo[@]}"; do
    wait_ready "$name"
    log "TLS $name ready (pid $(our_pid "$name"), log $(log_file "$name"))"
  done
  cmd_env
}

cmd_stop() {
  local name
  for name in "${INSTANCES[@]}"; do stop_one "$name"; done
}

cmd_status() {
  local name rc=0
  for name in "${INSTANCES[@]}"; do
    if running_ok "$name"; then
      printf '%-10s %-10s pid %-8s %s:%s (TLS, client certificates)\n' "$name-mtls" ready \
        "$(our_pid "$name")" "$HOST" "$(ports_of "$name" | cut -d' ' -f1)"
    else
      printf '%-10s %-10s\n' "$name-mtls" stopped
      rc=1
    fi
  done
  return $rc
}

cmd_env() {
  local files="ca_file=$CA&cert_file=$CLI_CRT&key_file=$CLI_KEY"
  [[ -f $CA ]] || return 0
  echo "export ANYKV_TEST_TLS_DIR=$CERTS"
  if our_pid etcd >/dev/null; then
    echo "export ANYKV_TEST_ETCD_TLS_URL='etcd://$HOST:$ETCD_PORT?$files'"
  fi
  if our_pid consul >/dev/null; then
    echo "export ANYKV_TEST_CONSUL_TLS_URL='consul://$HOST:$CONSUL_HTTPS_PORT?$files'"
  fi
  if our_pid redis >/dev/null; then
    echo "export ANYKV_TEST_REDIS_MTLS_URL='rediss://$HOST:$REDIS_PORT?$files'"
  fi
}

case ${1:-} in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  env) cmd_env ;;
  *) sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
