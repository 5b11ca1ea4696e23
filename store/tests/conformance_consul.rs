//! The conformance suite against the Consul agent at `ANYKV_TEST_CONSUL_URL`
//! (started by `scripts/services.sh`). Consul's session TTL minimum is 10 s.

fn main() {
    anykv_store_tests::run_env("consul", "ANYKV_TEST_CONSUL_URL", "session_ttl=10s")
}
