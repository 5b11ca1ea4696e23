#!/usr/bin/env bash
# The benchmark: start the real servers (scripts/services.sh), run anykv
# against each backend's raw client on them, write docs/benchmarks.md and
# docs/benchmarks.svg, stop the servers again.
#
#   scripts/bench.sh                     the full run (a few minutes)
#   scripts/bench.sh --quick             a tenth of the work, for a smoke test
#   scripts/bench.sh --backends etcd,redis
#   ANYKV_KEEP_SERVICES=1 scripts/bench.sh   leave the servers running afterwards
#
# Arguments go to the bench binary (store-tests/benches/backends). The report
# is written to docs/ only by a run over every backend; pass `--out DIR`
# to write it elsewhere.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)

header() { printf '\n==== %s ====\n' "$*" >&2; }

services_stop() {
  if [[ ${ANYKV_KEEP_SERVICES:-0} == 1 ]]; then
    header "leaving servers running (ANYKV_KEEP_SERVICES=1)"
    return 0
  fi
  header "stopping servers"
  bash "$ROOT/scripts/services.sh" stop >&2 || true
}

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is not on PATH: install a Rust toolchain (1.88 or newer) first, e.g. with rustup" >&2
  exit 1
fi

header "installing what is missing + starting the servers"
trap services_stop EXIT
bash "$ROOT/scripts/services.sh" start >/dev/null
eval "$(bash "$ROOT/scripts/services.sh" env)"

first_line() { "$@" 2>/dev/null | head -n 1 || true; }
redis_v=$(first_line "$ANYKV_TEST_REDIS_BIN" --version | sed -n 's/.* v=\([^ ]*\).*/\1/p')
etcd_v=$(first_line "$ANYKV_TEST_ETCD_BIN" --version | sed -n 's/^etcd Version: //p')
consul_v=$(first_line "$ANYKV_TEST_CONSUL_BIN" version | sed -n 's/^Consul v//p')
zk_v=$(dpkg-query -W -f '${Version}' zookeeper 2>/dev/null | sed 's/-.*//' || true)
export ANYKV_BENCH_SERVERS="etcd ${etcd_v:-?}, Consul ${consul_v:-?} (-dev agent), ZooKeeper ${zk_v:-?} (standalone), Redis ${redis_v:-?}"

args=("$@")
has_out=0 partial=0
for a in "$@"; do
  [[ $a == --out ]] && has_out=1
  [[ $a == --backends ]] && partial=1
done
if [[ $has_out -eq 0 && $partial -eq 0 ]]; then
  args+=(--out "$ROOT/docs")
fi

header "cargo bench -p anykv-store-tests --features full --bench backends -- ${args[*]}"
cargo bench -p anykv-store-tests --features full --bench backends -- "${args[@]}"
