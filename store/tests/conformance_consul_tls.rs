//! The conformance suite against a Consul agent that serves HTTPS only and
//! verifies client certificates (`verify_incoming_https`):
//! `ANYKV_TEST_CONSUL_TLS_URL`, from `scripts/services.sh env`, carries
//! `ca_file`, `cert_file` and `key_file`. Consul's session TTL minimum is
//! 10 s.

fn main() {
    anykv_store_tests::run_env("consul", "ANYKV_TEST_CONSUL_TLS_URL", "session_ttl=10s")
}
