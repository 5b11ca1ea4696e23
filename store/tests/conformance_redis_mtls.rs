//! The conformance suite against a TLS-only Redis that requires a client
//! certificate (`tls-auth-clients yes`): `ANYKV_TEST_REDIS_MTLS_URL`, from
//! `scripts/services.sh env`, is a `rediss://` URL with `ca_file`,
//! `cert_file` and `key_file`.

fn main() {
    // rustls needs a process-wide crypto provider, which is the
    // application's choice, not the library's.
    let _ = rustls::crypto::ring::default_provider().install_default();
    anykv_store_tests::run_env("redis", "ANYKV_TEST_REDIS_MTLS_URL", "session_ttl=3s")
}
