//! The conformance suite against a real etcd: `ANYKV_TEST_ETCD_URL` (see
//! `scripts/services.sh`). A 3 s session keeps the session and lock cases
//! short.

fn main() {
    anykv_store_tests::run_env("etcd", "ANYKV_TEST_ETCD_URL", "session_ttl=3s")
}
