//! The conformance suite against an etcd that serves TLS only and requires
//! a client certificate (`--client-cert-auth`): `ANYKV_TEST_ETCD_TLS_URL`,
//! from `scripts/services.sh env`, carries `ca_file`, `cert_file` and
//! `key_file`.

fn main() {
    anykv_store_tests::run_env("etcd", "ANYKV_TEST_ETCD_TLS_URL", "session_ttl=3s")
}
