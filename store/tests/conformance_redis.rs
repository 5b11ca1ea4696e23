//! The conformance suite against a real Redis (`ANYKV_TEST_REDIS_URL`, from
//! `scripts/services.sh env`).

fn main() {
    anykv_store_tests::run_env("redis", "ANYKV_TEST_REDIS_URL", "session_ttl=3s")
}
