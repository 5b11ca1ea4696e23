//! The conformance suite against the embedded memory store.

fn main() {
    anykv_store_tests::run("memory", |namespace: String| async move {
        // One named store per process, so every handle of a case shares data
        // while owning its own session.
        anykv::open(&format!("memory://conformance/{namespace}?session_ttl=1s")).await
    })
}
