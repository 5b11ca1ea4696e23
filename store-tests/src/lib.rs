//! # anykv conformance suite
//!
//! One set of named behaviour tests that every [`anykv::Store`] backend must
//! pass, so that code written against `dyn Store` behaves the same on etcd,
//! Consul, ZooKeeper, Redis and the memory store. Third-party backends run it
//! too.
//!
//! A backend runs the suite from an integration test with `harness = false`:
//!
//! ```no_run
//! // store/tests/conformance_memory.rs
//! fn main() {
//!     anykv_store_tests::run("memory", |namespace: String| async move {
//!         anykv::open(&format!("memory://suite/{namespace}?session_ttl=1s")).await
//!     })
//! }
//! ```
//!
//! The factory gets a namespace (a key prefix, unique per case and run) and
//! must return a *new handle with its own session* on the same backend each
//! time, so two-client cases (TTL, ephemeral keys, locks) are real. Each case
//! is its own named test (`group::behaviour`), runs on its own runtime, and
//! cleans up its namespace afterwards. A case that does not apply to a
//! backend (for example a killed child process for the in-process memory
//! store) is reported as ignored with the reason.
//!
//! Timing cases read [`anykv::Capabilities`] (`min_ttl`, `ttl_slack`,
//! `session_ttl`, `session_slack`) and hold the backend to its own numbers.

#![warn(missing_docs)]
#![allow(clippy::print_stdout)] // the child-process protocol speaks on stdout
#![allow(clippy::needless_doctest_main)] // the example is a whole test file

use std::future::Future;
use std::sync::Arc;

use anykv::{Result, Store};
use futures::future::BoxFuture;
use libtest_mimic::{Arguments, Completion, Failed, Trial};

mod cases;
mod harness;

pub use harness::{Ctx, Done};

/// A function that opens a new handle (new session) on the backend under
/// test, with its keys under the given namespace.
pub type Factory = Arc<dyn Fn(String) -> BoxFuture<'static, Result<Arc<dyn Store>>> + Send + Sync>;

/// Environment variable that turns a suite binary into the helper child
/// process of the "killed process" cases.
pub const CHILD_ENV: &str = "ANYKV_SUITE_CHILD";

/// Runs every case against the backend the factory opens, then exits the
/// process with libtest's exit code. Accepts the usual libtest arguments
/// (filters, `--list`, `--test-threads`, `--include-ignored`, …).
pub fn run<F, Fut>(backend: &str, factory: F) -> !
where
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Arc<dyn Store>>> + Send + 'static,
{
    let factory: Factory = Arc::new(move |ns| Box::pin(factory(ns)));
    if let Ok(namespace) = std::env::var(CHILD_ENV) {
        harness::child_main(factory, namespace);
    }
    let args = arguments();
    let run_id = harness::run_id();
    let trials = cases::all()
        .into_iter()
        .map(|case| {
            let factory = factory.clone();
            let name = format!("{}::{}", case.group, case.name);
            let namespace = format!("anykv-suite/{run_id}/{}.{}", case.group, case.name);
            Trial::ignorable_test(name, move || harness::run_case(case, factory, namespace))
                .with_kind(backend.to_owned())
        })
        .collect();
    libtest_mimic::run(&args, trials).exit()
}

/// Like [`run`], opening `"$env_var/<namespace>?<query>"` with [`anykv::open`].
///
/// If `env_var` is not set, every case is reported as ignored with the
/// reason — except under CI (`CI=true`), where a missing server is a failure.
pub fn run_env(backend: &str, env_var: &str, query: &str) -> ! {
    match std::env::var(env_var) {
        Ok(base) => {
            let query = query.to_owned();
            run(backend, move |namespace: String| {
                let url = join_url(&base, &namespace, &query);
                async move { anykv::open(&url).await }
            })
        }
        Err(_) => {
            let args = arguments();
            let under_ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
            let reason = format!(
                "{env_var} is not set: start the servers with scripts/services.sh and export its env"
            );
            let trials = cases::all()
                .into_iter()
                .map(|case| {
                    let reason = reason.clone();
                    let name = format!("{}::{}", case.group, case.name);
                    Trial::ignorable_test(name, move || {
                        if under_ci {
                            Err(Failed::from(format!("{reason} (required under CI)")))
                        } else {
                            Ok(Completion::ignored_with(reason))
                        }
                    })
                    .with_kind(backend.to_owned())
                })
                .collect();
            libtest_mimic::run(&args, trials).exit()
        }
    }
}

/// `base` (which may carry its own path and query) + `/namespace` + `query`.
fn join_url(base: &str, namespace: &str, query: &str) -> String {
    let (base, base_query) = match base.split_once('?') {
        Some((b, q)) => (b, q),
        None => (base, ""),
    };
    let mut url = format!("{}/{namespace}", base.trim_end_matches('/'));
    let queries: Vec<&str> = [base_query, query]
        .into_iter()
        .filter(|q| !q.is_empty())
        .collect();
    if !queries.is_empty() {
        url.push('?');
        url.push_str(&queries.join("&"));
    }
    url
}

fn arguments() -> Arguments {
    let mut args = Arguments::from_args();
    // Many cases wait on TTLs and sessions; run several at once by default.
    if args.test_threads.is_none() {
        args.test_threads = Some(8);
    }
    args
}
