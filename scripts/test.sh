#!/usr/bin/env bash
# Full test run: start the real servers (scripts/services.sh), run
#   cargo test --workspace --all-features "$@"
# against them, stop the servers again, exit with cargo's status.
#
#   ANYKV_KEEP_SERVICES=1 scripts/test.sh   leave the servers running afterwards
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)

header() { printf '\n==== %s ====\n' "$*"; }

services_stop() {
  if [[ ${ANYKV_KEEP_SERVICES:-0} == 1 ]]; then
    header "leaving test servers running (ANYKV_KEEP_SERVICES=1)"
    return 0
  fi
  header "stopping test servers"
  bash "$ROOT/scripts/services.sh" stop || true
}

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is not on PATH: install a Rust toolchain (1.88 or newer) first, e.g. with rustup" >&2
  exit 1
fi

header "installing system packages + starting test servers (Redis, etcd, ZooKeeper, Consul)"
# `start` also installs what is missing: redis-server, etcd-server/-client,
# zookeeper (+Java), consul (from Debian bullseye), protobuf-compiler,
# libprotobuf-dev (needed to build the etcd-client crate), openssl.
trap services_stop EXIT
bash "$ROOT/scripts/services.sh" start >/dev/null
eval "$(bash "$ROOT/scripts/services.sh" env)"

header "test environment"
bash "$ROOT/scripts/services.sh" env | sed 's/^export /  /'

header "cargo test --workspace --all-features $*"
rc=0
cargo test --workspace --all-features "$@" || rc=$?

# The same URL tests once more with default features only: they prove that a
# scheme whose backend is compiled out names the cargo feature to enable.
header "cargo test -p anykv --test open_urls (default features)"
cargo test -p anykv --test open_urls "$@" || rc=$?

# Leadership under faults on real clusters, quick mode: every fault kind at
# least once and at least 100 handovers per backend; an overlap fails the run.
header "scripts/nemesis.sh --quick"
bash "$ROOT/scripts/nemesis.sh" --quick || rc=$?

if [[ $rc -eq 0 ]]; then
  header "tests PASSED"
else
  header "tests FAILED (cargo exit status $rc)"
fi
exit "$rc"
