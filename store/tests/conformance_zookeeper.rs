//! The conformance suite against the ZooKeeper at `ANYKV_TEST_ZK_URL`
//! (started by `scripts/services.sh`, with `znode.container.checkIntervalMs=1000`).

fn main() {
    anykv_store_tests::run_env(
        "zookeeper",
        "ANYKV_TEST_ZK_URL",
        "session_ttl=3s&container_check_interval=1s",
    )
}
