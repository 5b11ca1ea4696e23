#!/usr/bin/env bash
# Leadership under faults on real clusters, checked (anykv-nemesis).
#
#   scripts/nemesis.sh                   full run: every fault twice, >= 1000 handovers
#                                        per backend; writes docs/nemesis.md
#   scripts/nemesis.sh --quick           every fault once, >= 100 handovers per backend
#                                        (what scripts/test.sh runs); writes
#                                        target/nemesis-quick.md
#   scripts/nemesis.sh --backend etcd    one backend (etcd, consul, zookeeper, redis)
#
# It installs the server packages if missing (scripts/services.sh install) but
# starts its own clusters on free loopback ports (data and logs under
# ${ANYKV_NEMESIS_DIR:-/tmp/anykv-nemesis}); the shared test servers are not
# touched. Every cluster and child process is killed when it ends, also on
# failure. Exit status: non-zero if the checker found a violation.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)

quick=0
args=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --quick) quick=1; args+=(--quick); shift ;;
    --backend) args+=(--backend "$2"); shift 2 ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "nemesis.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

bash "$ROOT/scripts/services.sh" install >&2
eval "$(bash "$ROOT/scripts/services.sh" env)"

cargo build -q -p anykv-nemesis --bin nemesis
bin="${CARGO_TARGET_DIR:-$ROOT/target}/debug/nemesis"

if [[ $quick -eq 1 ]]; then
  out="${CARGO_TARGET_DIR:-$ROOT/target}/nemesis-quick.md"
  cmd="scripts/nemesis.sh --quick"
else
  out="$ROOT/docs/nemesis.md"
  cmd="scripts/nemesis.sh"
fi
exec "$bin" run "${args[@]+"${args[@]}"}" --out "$out" \
  --dir "${ANYKV_NEMESIS_DIR:-/tmp/anykv-nemesis}" --command-line "$cmd"
