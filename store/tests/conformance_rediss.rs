//! The conformance suite against a TLS-only Redis over `rediss://`
//! (`ANYKV_TEST_REDISS_URL`, from `scripts/redis-tls.sh env`; it carries the
//! `ca_file` of the test CA).

fn main() {
    // rustls needs a process-wide crypto provider, which is the
    // application's choice, not the library's.
    let _ = rustls::crypto::ring::default_provider().install_default();
    anykv_store_tests::run_env("redis", "ANYKV_TEST_REDISS_URL", "session_ttl=3s")
}
