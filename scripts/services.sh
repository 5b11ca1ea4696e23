#!/usr/bin/env bash
# Real servers for the anykv test-suite (see DESIGN.md, "Real servers for tests").
#
#   scripts/services.sh install   install whatever is missing (apt, as root)
#   scripts/services.sh start     install + (re)start Redis, etcd, ZooKeeper, Consul
#                                 on loopback, non-default ports, plus the TLS ones
#                                 (scripts/redis-tls.sh, scripts/tls-services.sh);
#                                 prints the env exports
#   scripts/services.sh stop      stop them (harmless if not running)
#   scripts/services.sh restart   stop + start
#   scripts/services.sh status    show which ones are up
#   scripts/services.sh env       print `export ANYKV_TEST_*=...` lines (for eval)
#
# `start` when everything is already running and healthy is a no-op (apart from
# printing the env); a server that is down or unhealthy is (re)started.
#
# Tunables (environment):
#   ANYKV_SERVICES_DIR   state dir: data, logs, pid files   (default /tmp/anykv-services)
#   ANYKV_TOOLS_DIR      cache for tools not in this Debian release, i.e. Consul
#                        (default /opt/anykv-tools)
#   ANYKV_SERVICES_WAIT  seconds to wait for each server to become ready (default 90)
#   ANYKV_CONSUL_SUITE   Debian suite to take the consul package from (default bullseye)
set -euo pipefail

STATE_DIR="${ANYKV_SERVICES_DIR:-/tmp/anykv-services}"
TOOLS_DIR="${ANYKV_TOOLS_DIR:-/opt/anykv-tools}"
WAIT_SECS="${ANYKV_SERVICES_WAIT:-90}"
CONSUL_SUITE="${ANYKV_CONSUL_SUITE:-bullseye}"

HOST=127.0.0.1
REDIS_PORT=16379
ETCD_CLIENT_PORT=12379
ETCD_PEER_PORT=12380
ZK_PORT=12181
CONSUL_HTTP_PORT=18500
CONSUL_DNS_PORT=18600
CONSUL_SERVER_PORT=18300
CONSUL_SERF_LAN_PORT=18301
CONSUL_SERF_WAN_PORT=18302
CONSUL_GRPC_PORT=18502

SERVICES=(redis etcd zookeeper consul)

# The TLS-only Redis for the rediss:// tests lives in its own script.
REDIS_TLS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/redis-tls.sh"
redis_tls() { ANYKV_SERVICES_DIR="$STATE_DIR" ANYKV_TEST_REDIS_BIN="$(redis_bin)" bash "$REDIS_TLS" "$@"; }
# etcd, Consul and Redis with TLS that verifies client certificates, one CA.
TLS_SERVICES="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/tls-services.sh"
tls_services() {
  ANYKV_SERVICES_DIR="$STATE_DIR" ANYKV_TEST_REDIS_BIN="$(redis_bin)" \
    ANYKV_TEST_ETCD_BIN="$(etcd_bin)" ANYKV_TEST_CONSUL_BIN="$(consul_bin)" \
    ANYKV_SERVICES_WAIT="$WAIT_SECS" bash "$TLS_SERVICES" "$@"
}

CONSUL_BIN_DEFAULT="$TOOLS_DIR/consul/usr/bin/consul"

export DEBIAN_FRONTEND=noninteractive

# ---------------------------------------------------------------- helpers ---

log() { printf '[services] %s\n' "$*" >&2; }
die() { printf '[services] ERROR: %s\n' "$*" >&2; exit 1; }

# Commands run at exit (temp dirs, temporary policy-rc.d, ...).
_CLEANUPS=()
_run_cleanups() {
  local c
  for c in "${_CLEANUPS[@]+"${_CLEANUPS[@]}"}"; do eval "$c" || true; done
}
trap _run_cleanups EXIT
add_cleanup() { _CLEANUPS+=("$1"); }

have() { command -v "$1" >/dev/null 2>&1; }

pkg_installed() {
  [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == "install ok installed" ]]
}

need_root() {
  [[ $(id -u) -eq 0 ]] || die "installing packages needs root (run as root, or pre-install: $*)"
}

# Is something listening on 127.0.0.1:$1 ?
port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# Send a ZooKeeper four-letter word, print the answer.
zk_4lw() {
  local out
  out=$(
    exec 2>/dev/null
    exec 3<>"/dev/tcp/$HOST/$ZK_PORT" || exit 1
    printf '%s' "$1" >&3
    timeout 5 cat <&3
  ) 2>/dev/null || true
  printf '%s' "$out"
}

# HTTP GET body to stdout (curl, with a bounded time).
http_get() { curl -fsS --max-time 3 "$1" 2>/dev/null; }

# ------------------------------------------------------------ binaries ------

java_bin() {
  local j
  if [[ -n ${JAVA_HOME:-} && -x $JAVA_HOME/bin/java ]]; then j="$JAVA_HOME/bin/java"
  elif have java; then j=$(command -v java)
  else j=/usr/bin/java
  fi
  readlink -f "$j" 2>/dev/null || printf '%s\n' "$j"
}

redis_bin()  { command -v redis-server 2>/dev/null || echo /usr/bin/redis-server; }
redis_cli()  { command -v redis-cli 2>/dev/null || echo /usr/bin/redis-cli; }
etcd_bin()   { [[ -x /usr/bin/etcd ]] && echo /usr/bin/etcd || command -v etcd 2>/dev/null || echo /usr/bin/etcd; }
etcdctl_bin(){ command -v etcdctl 2>/dev/null || echo /usr/bin/etcdctl; }
consul_bin() { echo "$CONSUL_BIN_DEFAULT"; }
protoc_bin() { command -v protoc 2>/dev/null || echo /usr/bin/protoc; }

# ZooKeeper classpath: the Debian package's launcher uses
# CLASSPATH=/usr/share/java/zookeeper.jar (see /etc/zookeeper/conf/environment,
# which /usr/share/zookeeper/bin/zkEnv.sh links to); the jar's MANIFEST
# Class-Path lists its dependencies (/usr/share/java/*.jar). We make all of that
# explicit: every /usr/share/java/zookeeper*.jar plus the manifest's entries,
# absolute and de-duplicated, only those that exist.
zk_classpath() {
  local -a jars=()
  local j entry
  local main=/usr/share/java/zookeeper.jar
  [[ -e $main ]] && jars+=("$(readlink -f "$main")")
  for j in /usr/share/java/zookeeper*.jar; do
    [[ -e $j ]] || continue
    # skip version-suffixed symlinks to the same file
    j=$(readlink -f "$j")
    jars+=("$j")
  done
  if [[ -e $main ]] && have unzip; then
    # Class-Path: may be folded over several manifest lines (continuations start with a space).
    while read -r entry; do
      [[ -z $entry ]] && continue
      case $entry in
        file:*) entry=${entry#file:} ;;
        /*) ;;
        *) entry="$(dirname "$(readlink -f "$main")")/$entry" ;;
      esac
      [[ -e $entry ]] && jars+=("$(readlink -f "$entry")")
    done < <(unzip -p "$main" META-INF/MANIFEST.MF 2>/dev/null | tr -d '\r' |
             awk '/^Class-Path:/{cp=1; sub(/^Class-Path: ?/,""); printf "%s",$0; next}
                  cp && /^ /{sub(/^ /,""); printf "%s",$0; next}
                  {cp=0}' | tr ' ' '\n')
  fi
  # Not in the manifest, but wanted: a logging backend (slf4j -> log4j 1.2, as
  # the Debian package's deps provide) and netty's native common classes.
  for j in slf4j-log4j12.jar log4j-1.2.jar netty-transport-native-unix-common.jar; do
    [[ -e /usr/share/java/$j ]] && jars+=("$(readlink -f "/usr/share/java/$j")")
  done
  # de-duplicate, keep order, join with ':'
  local -A seen=()
  local out=""
  for j in "${jars[@]+"${jars[@]}"}"; do
    [[ -n ${seen[$j]:-} ]] && continue
    seen[$j]=1
    out+="${out:+:}$j"
  done
  # First: a directory holding log4j.properties (console logging), so a JVM
  # started with just this classpath logs to stdout/stderr.
  printf '%s\n' "$ZK_CONF_DIR:${out:-$main}"
}

ZK_CONF_DIR="$TOOLS_DIR/zookeeper-conf"
write_zk_log_config() {
  mkdir -p "$ZK_CONF_DIR"
  cat >"$ZK_CONF_DIR/log4j.properties.new" <<'EOF'
log4j.rootLogger=INFO, CONSOLE
log4j.appender.CONSOLE=org.apache.log4j.ConsoleAppender
log4j.appender.CONSOLE.Threshold=INFO
log4j.appender.CONSOLE.layout=org.apache.log4j.PatternLayout
log4j.appender.CONSOLE.layout.ConversionPattern=%d{ISO8601} [myid:%X{myid}] - %-5p [%t:%C{1}@%L] - %m%n
EOF
  mv "$ZK_CONF_DIR/log4j.properties.new" "$ZK_CONF_DIR/log4j.properties"
}

# --------------------------------------------------------------- install ----

# Prevent apt postinst scripts from starting the packages' own services
# (redis-server, etcd, zookeeper) while we install.
block_service_starts() {
  local p=/usr/sbin/policy-rc.d
  if [[ -e $p ]]; then
    return 0   # an existing policy is left alone (Docker images ship 'exit 101')
  fi
  printf '#!/bin/sh\n# temporary, written by anykv scripts/services.sh\nexit 101\n' >"$p"
  chmod 755 "$p"
  add_cleanup "rm -f '$p'"
}

APT_UPDATED=0
apt_update_once() {
  if [[ $APT_UPDATED -eq 0 ]]; then
    log "apt-get update"
    apt-get update -qq >/dev/null || apt-get update -q
    APT_UPDATED=1
  fi
}

install_system_packages() {
  local -a want=(redis-server redis-tools etcd-server etcd-client zookeeper
                 protobuf-compiler libprotobuf-dev openssl curl unzip ca-certificates)
  local -a missing=()
  local p
  for p in "${want[@]}"; do pkg_installed "$p" || missing+=("$p"); done
  have java || missing+=(default-jre-headless)
  if [[ ${#missing[@]} -eq 0 ]]; then
    return 0
  fi
  need_root "${missing[*]}"
  log "installing: ${missing[*]}"
  block_service_starts
  apt_update_once
  apt-get install -y -qq --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    "${missing[@]}" >/dev/null
  # In case something started them anyway (systemd-less machines normally
  # don't, and policy-rc.d forbids it): the packages' own daemons use the
  # default ports, we do not want them.
  local svc
  for svc in redis-server etcd zookeeper; do
    if [[ -x /etc/init.d/$svc ]]; then
      service "$svc" stop >/dev/null 2>&1 || true
    fi
    if have systemctl && [[ -d /run/systemd/system ]]; then
      systemctl disable --now "$svc" >/dev/null 2>&1 || true
    fi
  done
}

# Debian mirror URI(s) this machine is configured with (for the main archive,
# not -security), from one-line *.list and deb822 *.sources files.
debian_mirrors() {
  local codename
  codename=$( . /etc/os-release 2>/dev/null; echo "${VERSION_CODENAME:-bookworm}" )
  {
    local f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
      [[ -f $f ]] || continue
      # deb [opts] URI SUITE COMPONENTS...
      sed -e 's/#.*//' -e 's/\[[^]]*\]//' "$f" |
        awk -v cn="$codename" '$1=="deb" && $3==cn {print $2}'
    done
    for f in /etc/apt/sources.list.d/*.sources; do
      [[ -f $f ]] || continue
      awk -v cn="$codename" '
        function flush() {
          if (uris != "" && enabled != "no" && types ~ /(^| )deb( |$)/) {
            n = split(suites, s, " ")
            for (i = 1; i <= n; i++) if (s[i] == cn) { m = split(uris, u, " "); for (j = 1; j <= m; j++) print u[j]; break }
          }
          uris = ""; suites = ""; types = ""; enabled = ""
        }
        /^[ \t]*#/ { next }
        /^[ \t]*$/ { flush(); next }
        { line = $0; key = tolower(line); sub(/:.*/, "", key); val = line; sub(/^[^:]*:[ \t]*/, "", val)
          if (key == "uris") uris = val
          else if (key == "suites") suites = val
          else if (key == "types") types = val
          else if (key == "enabled") enabled = tolower(val) }
        END { flush() }' "$f"
    done
  } | sed 's:/*$::' | awk '!seen[$0]++'
}

# Fetch the `consul` package of Debian $CONSUL_SUITE with a throw-away apt
# configuration and unpack it into $TOOLS_DIR/consul (cached).
install_consul() {
  local bin
  bin=$(consul_bin)
  if [[ -x $bin ]] && "$bin" version >/dev/null 2>&1; then
    return 0
  fi
  need_root consul
  have apt-get || die "apt-get not found; cannot fetch consul"
  local tmp
  tmp=$(mktemp -d /tmp/anykv-consul-apt.XXXXXX)
  add_cleanup "rm -rf '$tmp'"
  mkdir -p "$tmp/lists/partial" "$tmp/archives/partial" "$tmp/cache" "$tmp/empty" "$tmp/dl"

  local -a mirrors=()
  mapfile -t mirrors < <(debian_mirrors)
  mirrors+=(http://deb.debian.org/debian http://archive.debian.org/debian)

  local keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  local -a apt_opts=(
    -o "Dir::Etc::SourceList=$tmp/sources.list"
    -o "Dir::Etc::SourceParts=$tmp/empty"
    -o "Dir::Etc::PreferencesParts=$tmp/empty"
    -o "Dir::Etc::Preferences=$tmp/empty/none"
    -o "Dir::State::Lists=$tmp/lists"
    -o "Dir::Cache=$tmp/cache"
    -o "Dir::Cache::Archives=$tmp/archives"
    -o "Acquire::Check-Valid-Until=false"
    -o "APT::Sandbox::User=root"
    -o "Acquire::Languages=none"
    -o "APT::Default-Release="
  )
  local m trust ok=0 tried=""
  for m in "${mirrors[@]}"; do
    [[ " $tried " == *" $m "* ]] && continue
    tried+=" $m"
    for trust in "signed-by=$keyring" "trusted=yes"; do
      [[ $trust == signed-by=* && ! -r $keyring ]] && continue
      printf 'deb [%s] %s %s main\n' "$trust" "$m" "$CONSUL_SUITE" >"$tmp/sources.list"
      log "fetching consul from: $(cat "$tmp/sources.list")"
      rm -f "$tmp/lists/"*_Packages* "$tmp/lists/"*Release* 2>/dev/null || true
      if apt-get "${apt_opts[@]}" -q update >"$tmp/update.log" 2>&1 &&
         ! grep -qE '^(W|E): (Failed|GPG|The repository|Some index)' "$tmp/update.log" &&
         (cd "$tmp/dl" && apt-get "${apt_opts[@]}" -q download consul >"$tmp/download.log" 2>&1) &&
         compgen -G "$tmp/dl/consul_*.deb" >/dev/null; then
        ok=1
        break 2
      fi
      log "  (did not work: $(tail -n 2 "$tmp/update.log" "$tmp/download.log" 2>/dev/null | grep -E '^(W|E):' | head -n 2 | tr '\n' ' '))"
    done
  done
  [[ $ok -eq 1 ]] || die "could not download the consul package of Debian $CONSUL_SUITE (tried:$tried)"

  local deb
  deb=$(ls "$tmp"/dl/consul_*.deb | head -n 1)
  log "unpacking $(basename "$deb") into $TOOLS_DIR/consul"
  mkdir -p "$TOOLS_DIR"
  rm -rf "$TOOLS_DIR/consul.new"
  dpkg -x "$deb" "$TOOLS_DIR/consul.new"
  cp "$deb" "$TOOLS_DIR/consul.new/"
  rm -rf "$TOOLS_DIR/consul"
  mv "$TOOLS_DIR/consul.new" "$TOOLS_DIR/consul"
  "$bin" version >/dev/null || die "unpacked consul does not run: $bin"
}

cmd_install() {
  install_system_packages
  install_consul
  local b
  for b in "$(redis_bin)" "$(etcd_bin)" "$(consul_bin)" "$(java_bin)" "$(protoc_bin)"; do
    [[ -x $b ]] || die "expected binary missing after install: $b"
  done
  [[ -e /usr/share/java/zookeeper.jar ]] || die "/usr/share/java/zookeeper.jar missing after install"
  if [[ ! -f $ZK_CONF_DIR/log4j.properties ]]; then
    write_zk_log_config
  fi
}

# ------------------------------------------------------- process control ----

pidfile() { echo "$STATE_DIR/$1.pid"; }
logfile() { echo "$STATE_DIR/$1.log"; }

# A pattern the process's command line must contain (guards against pid reuse).
cmd_pattern() {
  case $1 in
    redis) echo "redis-server" ;;
    etcd) echo "etcd" ;;
    zookeeper) echo "QuorumPeerMain" ;;
    consul) echo "consul" ;;
  esac
}

# Does process $1 look like service $2 (its command line contains the pattern)?
proc_matches() {
  local cmdline
  cmdline=$(tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null) || return 1
  [[ $cmdline == *"$(cmd_pattern "$2")"* ]]
}

# Prints the pid if the service's pid file points to a live process of that service.
svc_pid() {
  local f pid
  f=$(pidfile "$1")
  [[ -f $f ]] || return 1
  pid=$(tr -dc '0-9' <"$f")
  [[ -n $pid ]] || return 1
  alive "$pid" || return 1
  proc_matches "$pid" "$1" || return 1
  echo "$pid"
}

svc_port() {
  case $1 in
    redis) echo "$REDIS_PORT" ;;
    etcd) echo "$ETCD_CLIENT_PORT" ;;
    zookeeper) echo "$ZK_PORT" ;;
    consul) echo "$CONSUL_HTTP_PORT" ;;
  esac
}

svc_ready() {
  case $1 in
    redis)
      [[ $("$(redis_cli)" -h "$HOST" -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]] ;;
    etcd)
      [[ $(http_get "http://$HOST:$ETCD_CLIENT_PORT/health") == *'"health":"true"'* ]] ;;
    zookeeper)
      [[ $(zk_4lw ruok) == imok && $(zk_4lw srvr) == *Mode:* ]] ;;
    consul)
      local leader
      leader=$(http_get "http://$HOST:$CONSUL_HTTP_PORT/v1/status/leader") || return 1
      [[ -n $leader && $leader != '""' ]] || return 1
      # Sessions are refused until the agent has registered its own node.
      [[ $(http_get "http://$HOST:$CONSUL_HTTP_PORT/v1/catalog/node/anykv-test") == *'"Node"'* ]] ;;
  esac
}

# pids of processes listening on TCP port $1 (best effort, needs ss).
listeners() {
  have ss || return 0
  ss -Htlnp "sport = :$1" 2>/dev/null | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u
}

# Is pid $1 alive? (A zombie, i.e. exited but not yet reaped by its parent,
# counts as dead: our servers are reparented to pid 1, which may reap slowly.)
alive() {
  local st
  kill -0 "$1" 2>/dev/null || return 1
  st=$(sed -e 's/.*) //' -e 's/ .*//' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ -n $st && $st != Z && $st != X ]]
}

kill_pid() {
  local pid=$1 name=$2 i
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 100; i++)); do          # up to 10 s
    alive "$pid" || return 0
    sleep 0.1
  done
  log "$name (pid $pid) did not exit after TERM; sending KILL"
  kill -KILL "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    alive "$pid" || return 0
    sleep 0.1
  done
}

stop_one() {
  local name=$1 pid port p
  if pid=$(svc_pid "$name"); then
    log "stopping $name (pid $pid)"
    kill_pid "$pid" "$name"
  fi
  rm -f "$(pidfile "$name")"
  # A stale instance of the same server (e.g. pid file lost) on our ports.
  for port in $(all_ports "$name"); do
    for p in $(listeners "$port"); do
      if proc_matches "$p" "$name"; then
        log "stopping stale $name (pid $p) on port $port"
        kill_pid "$p" "$name"
      fi
    done
  done
}

all_ports() {
  case $1 in
    redis) echo "$REDIS_PORT" ;;
    etcd) echo "$ETCD_CLIENT_PORT $ETCD_PEER_PORT" ;;
    zookeeper) echo "$ZK_PORT" ;;
    consul) echo "$CONSUL_HTTP_PORT $CONSUL_DNS_PORT $CONSUL_SERVER_PORT $CONSUL_SERF_LAN_PORT $CONSUL_SERF_WAN_PORT $CONSUL_GRPC_PORT" ;;
  esac
}

# Start "$@" detached (own session, so it survives the caller's process group),
# stdout+stderr to the service log, pid to the pid file.
spawn() {
  local name=$1; shift
  local lf pid
  lf=$(logfile "$name")
  : >"$lf"
  # setsid does not fork here (we are not a process-group leader), so $! is the server's pid.
  # fd 9 (our lock) must not leak into the server.
  setsid "$@" >>"$lf" 2>&1 </dev/null 9>&- &
  pid=$!
  echo "$pid" >"$(pidfile "$name")"
}

wait_ready() {
  local name=$1 deadline pid
  deadline=$((SECONDS + WAIT_SECS))
  while ! svc_ready "$name"; do
    pid=$(tr -dc '0-9' <"$(pidfile "$name")" 2>/dev/null || true)
    if [[ -z $pid ]] || ! alive "$pid"; then
      fail_start "$name" "process exited"
    fi
    if ((SECONDS >= deadline)); then
      fail_start "$name" "not ready after ${WAIT_SECS}s"
    fi
    sleep 0.2
  done
}

fail_start() {
  local name=$1 why=$2
  {
    printf '[services] ERROR: %s failed to start (%s). Last lines of %s:\n' "$name" "$why" "$(logfile "$name")"
    tail -n 40 "$(logfile "$name")" 2>/dev/null | sed 's/^/    | /'
  } >&2
  exit 1
}

check_ports_free() {
  local name=$1 port
  for port in $(all_ports "$name"); do
    if port_open "$port"; then
      die "port $HOST:$port needed by $name is in use by something else: $(listeners "$port" | tr '\n' ' ')"
    fi
  done
}

start_redis() {
  local d="$STATE_DIR/redis"
  rm -rf "$d"; mkdir -p "$d"
  spawn redis "$(redis_bin)" --bind "$HOST" --port "$REDIS_PORT" \
    --save '' --appendonly no --daemonize no --dir "$d" \
    --protected-mode no --loglevel notice
}

start_etcd() {
  local d="$STATE_DIR/etcd"
  rm -rf "$d"; mkdir -p "$d"; chmod 700 "$d"
  spawn etcd "$(etcd_bin)" --name anykv --data-dir "$d/data" \
    --listen-client-urls "http://$HOST:$ETCD_CLIENT_PORT" \
    --advertise-client-urls "http://$HOST:$ETCD_CLIENT_PORT" \
    --listen-peer-urls "http://$HOST:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://$HOST:$ETCD_PEER_PORT" \
    --initial-cluster "anykv=http://$HOST:$ETCD_PEER_PORT" \
    --initial-cluster-state new --initial-cluster-token anykv-test \
    --logger zap --log-outputs stderr
}

start_zookeeper() {
  local d="$STATE_DIR/zookeeper"
  rm -rf "$d"; mkdir -p "$d/conf" "$d/data"
  cat >"$d/conf/zoo.cfg" <<EOF
tickTime=2000
initLimit=10
syncLimit=5
minSessionTimeout=2000
maxSessionTimeout=60000
dataDir=$d/data
clientPort=$ZK_PORT
clientPortAddress=$HOST
maxClientCnxns=0
admin.enableServer=false
4lw.commands.whitelist=*
extendedTypesEnabled=true
EOF
  spawn zookeeper "$(java_bin)" -Xms64m -Xmx512m \
    -cp "$(zk_classpath)" \
    -Dzookeeper.log.dir="$d" \
    -Dzookeeper.extendedTypesEnabled=true \
    -Dznode.container.checkIntervalMs=1000 \
    -Dzookeeper.admin.enableServer=false \
    -Dzookeeper.4lw.commands.whitelist='*' \
    org.apache.zookeeper.server.quorum.QuorumPeerMain "$d/conf/zoo.cfg"
}

start_consul() {
  local d="$STATE_DIR/consul"
  rm -rf "$d"; mkdir -p "$d"
  # The benchmarks hold 1,000 watches (one blocking query, so one HTTP
  # connection, each) on one agent; the default allows 200 per client IP.
  cat >"$d/config.hcl" <<EOF
disable_update_check = true
limits {
  http_max_conns_per_client = 4096
}
EOF
  spawn consul "$(consul_bin)" agent -dev \
    -node anykv-test \
    -client "$HOST" -bind "$HOST" -advertise "$HOST" \
    -http-port "$CONSUL_HTTP_PORT" -dns-port "$CONSUL_DNS_PORT" \
    -server-port "$CONSUL_SERVER_PORT" \
    -serf-lan-port "$CONSUL_SERF_LAN_PORT" -serf-wan-port "$CONSUL_SERF_WAN_PORT" \
    -grpc-port "$CONSUL_GRPC_PORT" \
    -config-file "$d/config.hcl" \
    -log-level info
}

# Serialise start/stop between concurrent callers (e.g. two test runs).
LOCKED=0
take_lock() {
  [[ $LOCKED -eq 0 ]] || return 0
  LOCKED=1
  mkdir -p "$STATE_DIR"
  if have flock; then
    exec 9>"$STATE_DIR/.lock"
    if ! flock -w 300 9; then
      die "timed out waiting for the lock $STATE_DIR/.lock (another services.sh running?)"
    fi
  fi
}

# Our instance is alive: healthy now, or becomes healthy within a short grace
# period (it may have just been started by an interrupted earlier run)?
running_ok() {
  local name=$1 i
  svc_pid "$name" >/dev/null || return 1
  for ((i = 0; i < 75; i++)); do           # up to ~15 s
    svc_ready "$name" && return 0
    svc_pid "$name" >/dev/null || return 1
    sleep 0.2
  done
  return 1
}

cmd_start() {
  cmd_install
  take_lock
  local name
  local -a todo=()
  for name in "${SERVICES[@]}"; do
    if running_ok "$name"; then
      log "$name already running (pid $(svc_pid "$name"))"
    else
      todo+=("$name")
    fi
  done
  # Stop stale instances and make sure every port is free before starting anything.
  for name in "${todo[@]+"${todo[@]}"}"; do
    stop_one "$name"
  done
  for name in "${todo[@]+"${todo[@]}"}"; do
    check_ports_free "$name"
  done
  for name in "${todo[@]+"${todo[@]}"}"; do
    log "starting $name"
    "start_$name"
  done
  for name in "${todo[@]+"${todo[@]}"}"; do
    wait_ready "$name"
    log "$name ready (pid $(svc_pid "$name"), log $(logfile "$name"))"
  done
  redis_tls start >/dev/null
  tls_services start >/dev/null
  cmd_env
}

cmd_stop() {
  take_lock
  tls_services stop
  redis_tls stop
  local i
  for ((i = ${#SERVICES[@]} - 1; i >= 0; i--)); do
    stop_one "${SERVICES[$i]}"
  done
}

cmd_status() {
  local name pid rc=0 state
  for name in "${SERVICES[@]}"; do
    if pid=$(svc_pid "$name"); then
      if svc_ready "$name"; then state="ready"; else state="NOT READY"; rc=1; fi
      printf '%-10s %-10s pid %-8s %s:%s\n' "$name" "$state" "$pid" "$HOST" "$(svc_port "$name")"
    else
      printf '%-10s %-10s\n' "$name" "stopped"
      rc=1
    fi
  done
  redis_tls status || rc=1
  tls_services status || rc=1
  return $rc
}

cmd_env() {
  cat <<EOF
export ANYKV_TEST_REDIS_URL=redis://$HOST:$REDIS_PORT
export ANYKV_TEST_ETCD_URL=etcd://$HOST:$ETCD_CLIENT_PORT
export ANYKV_TEST_ZK_URL=zk://$HOST:$ZK_PORT
export ANYKV_TEST_CONSUL_URL=consul://$HOST:$CONSUL_HTTP_PORT
export ANYKV_TEST_REDIS_BIN=$(redis_bin)
export ANYKV_TEST_REDIS_CLI=$(redis_cli)
export ANYKV_TEST_ETCD_BIN=$(etcd_bin)
export ANYKV_TEST_ETCDCTL_BIN=$(etcdctl_bin)
export ANYKV_TEST_CONSUL_BIN=$(consul_bin)
export ANYKV_TEST_JAVA=$(java_bin)
export ANYKV_TEST_ZK_CLASSPATH=$(zk_classpath)
export ANYKV_TEST_ZK_MAIN=org.apache.zookeeper.server.quorum.QuorumPeerMain
export ANYKV_SERVICES_DIR=$STATE_DIR
export PROTOC=$(protoc_bin)
EOF
  redis_tls env
  tls_services env
}

usage() {
  sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

main() {
  [[ $# -ge 1 ]] || usage
  case $1 in
    install) cmd_install ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    restart) cmd_stop; cmd_start ;;
    status) cmd_status ;;
    env) cmd_env ;;
    -h|--help|help) usage ;;
    *) usage ;;
  esac
}

main "$@"
