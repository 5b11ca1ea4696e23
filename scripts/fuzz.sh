#!/usr/bin/env bash
# Property campaign on generated store URLs and keys, run long:
#   scripts/fuzz.sh [seconds]      (default 600)
# Runs store/tests/input_properties.rs with ANYKV_PROPTEST_SECS set: every
# property in turn, in batches of fresh random cases, until the time is up.
# It fails on the first panic or leaked password, printing the shrunk input;
# otherwise it prints how many cases ran. Needs no servers: nothing connects.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
secs=${1:-600}
if ! [[ $secs =~ ^[0-9]+$ ]]; then
  echo "usage: scripts/fuzz.sh [seconds]" >&2
  exit 2
fi

ANYKV_PROPTEST_SECS=$secs exec cargo test -p anykv --all-features \
  --test input_properties campaign -- --exact --nocapture
