//! The store server goes away for 5 s and comes back: the candidates report
//! errors on their error streams, keep campaigning, nothing panics, and a
//! leader exists again within the session TTL + 5 s after the server
//! answers again — which a follower then shows.
//!
//! Each backend gets a private server (free loopback ports, data in a temp
//! dir) that is SIGKILLed and restarted on the same port and data dir, so
//! the shared test servers are never touched. A backend runs when its cargo
//! feature is on (`--features redis`, … or `full`) and its server binary is
//! named by the environment (`scripts/services.sh env`):
//! `ANYKV_TEST_REDIS_BIN`, `ANYKV_TEST_ETCD_BIN`, `ANYKV_TEST_CONSUL_BIN`,
//! `ANYKV_TEST_JAVA` + `ANYKV_TEST_ZK_CLASSPATH`. Otherwise its case is
//! ignored with the reason — except under `CI=true`, where a missing binary
//! is a failure. A backend whose `open` still says it is not implemented is
//! ignored with that reason.

#![allow(clippy::print_stdout)]
// Which helpers are used depends on the backend features compiled in.
#![allow(dead_code)]

// The loopback port picker of the fault-injection crate (std only).
#[path = "../../nemesis/src/ports.rs"]
mod ports;

use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anykv::StoreExt;
use anykv::{Error, Store};
use anykv_leadership::{Candidate, Follower};
use futures::StreamExt;
use libtest_mimic::{Arguments, Completion, Failed, Trial};

/// How long the server stays down.
const OUTAGE: Duration = Duration::from_secs(5);
/// How long a server may take to start, or a first leader to be elected.
const PATIENCE: Duration = Duration::from_secs(60);
const CANDIDATES: usize = 3;
const KEY: &str = "leader";

/// Panics anywhere in the process (tasks included), counted by a hook.
static PANICS: AtomicUsize = AtomicUsize::new(0);

type CaseResult = Result<Completion, Failed>;

fn main() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        default_hook(info);
    }));
    let mut args = Arguments::from_args();
    // Servers and timing: one case at a time.
    if args.test_threads.is_none() {
        args.test_threads = Some(1);
    }
    let trials = vec![
        trial("redis", redis),
        trial("etcd", etcd),
        trial("consul", consul),
        trial("zookeeper", zookeeper),
    ];
    libtest_mimic::run(&args, trials).exit()
}

fn trial(backend: &'static str, case: fn() -> CaseResult) -> Trial {
    Trial::ignorable_test(
        format!("{backend}::leader_is_back_after_the_server_was_down_for_5s"),
        case,
    )
    .with_kind(backend)
}

fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Reads the environment variables a backend's server needs; `Err` is the
/// outcome when one is missing (ignored, or failed under CI).
fn env_vars(names: &[&str]) -> Result<Vec<String>, CaseResult> {
    let mut values = Vec::new();
    for name in names {
        match std::env::var(name) {
            Ok(value) if !value.is_empty() => values.push(value),
            _ => {
                let reason =
                    format!("{name} is not set: run `eval \"$(scripts/services.sh env)\"` first");
                return Err(if under_ci() {
                    Err(Failed::from(format!("{reason} (required under CI)")))
                } else {
                    Ok(Completion::ignored_with(reason))
                });
            }
        }
    }
    Ok(values)
}

fn feature_off(feature: &str) -> CaseResult {
    let reason = format!("built without the `{feature}` feature of anykv-leadership");
    if under_ci() {
        Err(Failed::from(format!("{reason} (CI runs --all-features)")))
    } else {
        Ok(Completion::ignored_with(reason))
    }
}

// ------------------------------------------------------------ the servers

#[cfg(feature = "redis")]
fn redis() -> CaseResult {
    let bin = match env_vars(&["ANYKV_TEST_REDIS_BIN"]) {
        Ok(v) => v[0].clone(),
        Err(outcome) => return outcome,
    };
    let ports = free_ports(1)?;
    let server = Server::new("redis", ports.clone(), move |dir| {
        let mut cmd = Command::new(&bin);
        cmd.args(["--bind", "127.0.0.1", "--port", &ports[0].to_string()])
            // Durable across the restart, like the other backends' data dirs.
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .args(["--protected-mode", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir);
        cmd
    })?;
    let url = format!("redis://127.0.0.1:{}", server.ports[0]);
    run_outage(server, url, "session_ttl=3s")
}

#[cfg(not(feature = "redis"))]
fn redis() -> CaseResult {
    feature_off("redis")
}

#[cfg(feature = "etcd")]
fn etcd() -> CaseResult {
    let bin = match env_vars(&["ANYKV_TEST_ETCD_BIN"]) {
        Ok(v) => v[0].clone(),
        Err(outcome) => return outcome,
    };
    let ports = free_ports(2)?;
    let server = Server::new("etcd", ports.clone(), move |dir| {
        let client = format!("http://127.0.0.1:{}", ports[0]);
        let peer = format!("http://127.0.0.1:{}", ports[1]);
        let mut cmd = Command::new(&bin);
        cmd.args(["--name", "outage"])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("outage={peer}")])
            .args(["--initial-cluster-state", "new"])
            .args(["--logger", "zap", "--log-outputs", "stderr"]);
        cmd
    })?;
    let url = format!("etcd://127.0.0.1:{}", server.ports[0]);
    run_outage(server, url, "session_ttl=3s")
}

#[cfg(not(feature = "etcd"))]
fn etcd() -> CaseResult {
    feature_off("etcd")
}

#[cfg(feature = "consul")]
fn consul() -> CaseResult {
    let bin = match env_vars(&["ANYKV_TEST_CONSUL_BIN"]) {
        Ok(v) => v[0].clone(),
        Err(outcome) => return outcome,
    };
    let ports = free_ports(4)?;
    let server = Server::new("consul", ports.clone(), move |dir| {
        let mut cmd = Command::new(&bin);
        // A dev agent keeps its state in memory: the restart loses every
        // session, the harshest kind of comeback.
        cmd.args(["agent", "-dev", "-node", "anykv-outage"])
            .args(["-client", "127.0.0.1", "-bind", "127.0.0.1"])
            .args(["-advertise", "127.0.0.1"])
            .args(["-http-port", &ports[0].to_string()])
            .args(["-server-port", &ports[1].to_string()])
            .args(["-serf-lan-port", &ports[2].to_string()])
            .args(["-serf-wan-port", &ports[3].to_string()])
            .args(["-dns-port", "-1", "-grpc-port", "-1"])
            .arg("-data-dir")
            .arg(dir.join("data"));
        cmd
    })?;
    let url = format!("consul://127.0.0.1:{}", server.ports[0]);
    run_outage(server, url, "session_ttl=10s")
}

#[cfg(not(feature = "consul"))]
fn consul() -> CaseResult {
    feature_off("consul")
}

#[cfg(feature = "zookeeper")]
fn zookeeper() -> CaseResult {
    let vars = match env_vars(&["ANYKV_TEST_JAVA", "ANYKV_TEST_ZK_CLASSPATH"]) {
        Ok(v) => v,
        Err(outcome) => return outcome,
    };
    let (java, classpath) = (vars[0].clone(), vars[1].clone());
    let main_class = std::env::var("ANYKV_TEST_ZK_MAIN")
        .unwrap_or_else(|_| "org.apache.zookeeper.server.quorum.QuorumPeerMain".into());
    let ports = free_ports(1)?;
    let server = Server::new("zookeeper", ports.clone(), move |dir| {
        let config = dir.join("zoo.cfg");
        // Written on every start; the same content each time.
        let written = std::fs::write(
            &config,
            format!(
                "tickTime=1000\ninitLimit=10\nsyncLimit=5\nminSessionTimeout=2000\n\
                 maxSessionTimeout=60000\ndataDir={}\nclientPort={}\n\
                 clientPortAddress=127.0.0.1\nmaxClientCnxns=0\nadmin.enableServer=false\n\
                 4lw.commands.whitelist=*\nextendedTypesEnabled=true\n",
                dir.join("data").display(),
                ports[0]
            ),
        );
        if let Err(e) = written {
            eprintln!("cannot write {}: {e}", config.display());
        }
        let mut cmd = Command::new(&java);
        cmd.arg("-Xmx256m")
            .arg("-cp")
            .arg(&classpath)
            .arg("-Dzookeeper.extendedTypesEnabled=true")
            .arg("-Dznode.container.checkIntervalMs=1000")
            .arg("-Dzookeeper.admin.enableServer=false")
            .arg(format!("-Dzookeeper.log.dir={}", dir.display()))
            .arg(&main_class)
            .arg(&config);
        cmd
    })?;
    let url = format!("zk://127.0.0.1:{}", server.ports[0]);
    run_outage(server, url, "session_ttl=4s&container_check_interval=1s")
}

#[cfg(not(feature = "zookeeper"))]
fn zookeeper() -> CaseResult {
    feature_off("zookeeper")
}

fn free_ports(count: usize) -> Result<Vec<u16>, Failed> {
    ports::free_loopback_ports(count).map_err(|e| Failed::from(format!("no free port: {e}")))
}

/// A private server process: same command, port and data dir on every
/// start; SIGKILLed on drop.
struct Server {
    name: &'static str,
    ports: Vec<u16>,
    dir: tempfile::TempDir,
    command: Box<dyn Fn(&std::path::Path) -> Command + Send>,
    child: Option<Child>,
}

impl Server {
    fn new(
        name: &'static str,
        ports: Vec<u16>,
        command: impl Fn(&std::path::Path) -> Command + Send + 'static,
    ) -> Result<Self, Failed> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("anykv-outage-{name}-"))
            .tempdir()
            .map_err(|e| Failed::from(format!("temp dir: {e}")))?;
        Ok(Server {
            name,
            ports,
            dir,
            command: Box::new(command),
            child: None,
        })
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    fn start(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| format!("log file: {e}"))?;
        let err_log = log.try_clone().map_err(|e| format!("log file: {e}"))?;
        let child = (self.command)(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err_log)
            .spawn()
            .map_err(|e| format!("cannot start the private {} server: {e}", self.name))?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL: no goodbye to the clients.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

// ------------------------------------------------------------ the scenario

fn run_outage(server: Server, base: String, query: &'static str) -> CaseResult {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failed::from(format!("runtime: {e}")))?;
    let panics_before = PANICS.load(Ordering::SeqCst);
    let result = runtime.block_on(scenario(server, base, query));
    runtime.shutdown_timeout(Duration::from_secs(5));
    let panics = PANICS.load(Ordering::SeqCst) - panics_before;
    match result {
        Ok(outcome) if panics == 0 => Ok(outcome),
        Ok(_) => Err(Failed::from(format!("{panics} panic(s) during the outage"))),
        Err(e) => Err(e),
    }
}

/// Retries `attempt` until it succeeds or `within` passes; an
/// `Unsupported` error is final at once.
async fn retry<T, F, Fut>(within: Duration, what: &str, mut attempt: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anykv::Result<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), attempt()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e @ Error::Unsupported { .. })) => return Err(format!("{what}: {e}")),
            Ok(Err(e)) if Instant::now() > deadline => return Err(format!("{what}: {e}")),
            Err(_) if Instant::now() > deadline => return Err(format!("{what}: timed out")),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// What one candidate's streams showed.
#[derive(Default)]
struct Seen {
    errors: Vec<String>,
    elected_ended: bool,
    errors_ended: bool,
}

async fn scenario(mut server: Server, base: String, query: &str) -> CaseResult {
    let url = format!("{base}/anykv-outage?{query}");
    server.start().map_err(Failed::from)?;
    // The first open says whether the backend exists at all yet.
    let probe = match retry(PATIENCE, "open", || anykv::open(&url)).await {
        Ok(store) => store,
        Err(e) if e.contains("not implemented yet") => {
            return Ok(Completion::ignored_with(format!(
                "the {} backend is not implemented yet",
                server.name
            )))
        }
        Err(e) => return Err(format!("{e}\n{}", server.log_tail()).into()),
    };
    let caps = probe.capabilities();

    let mut stores: Vec<Arc<dyn Store>> = Vec::new();
    let mut candidates = Vec::new();
    let mut seen = Vec::new();
    let mut readers = Vec::new();
    for i in 0..CANDIDATES {
        let store = anykv::open(&url).await.map_err(|e| e.to_string())?;
        let candidate = Arc::new(Candidate::new(store.clone(), KEY, format!("node-{i}")));
        let (mut elected, mut errors) = candidate
            .run_for_election()
            .await
            .map_err(|e| e.to_string())?;
        let log = Arc::new(Mutex::new(Seen::default()));
        let (log_elected, log_errors) = (log.clone(), log.clone());
        readers.push(tokio::spawn(async move {
            while elected.next().await.is_some() {}
            lock(&log_elected).elected_ended = true;
        }));
        readers.push(tokio::spawn(async move {
            while let Some(error) = errors.next().await {
                lock(&log_errors).errors.push(error.to_string());
            }
            lock(&log_errors).errors_ended = true;
        }));
        stores.push(store);
        candidates.push(candidate);
        seen.push(log);
    }
    let (mut leaders_seen, _follower_errors) = Follower::new(probe.clone(), KEY)
        .follow_election()
        .await
        .map_err(|e| e.to_string())?;
    let follower_log = Arc::new(Mutex::new(Vec::new()));
    let follower = {
        let follower_log = follower_log.clone();
        tokio::spawn(async move {
            while let Some(leader) = leaders_seen.next().await {
                lock(&follower_log).push(leader);
            }
        })
    };

    let one_leader = || {
        let leaders: Vec<usize> = (0..candidates.len())
            .filter(|&i| candidates[i].is_leader())
            .collect();
        leaders
    };
    wait_until(PATIENCE, || one_leader().len() == 1)
        .await
        .map_err(|_| "no leader before the outage")?;
    let before = one_leader()[0];

    // The outage.
    server.kill();
    tokio::time::sleep(OUTAGE).await;
    server.start().map_err(Failed::from)?;
    retry(PATIENCE, "the restarted server answers", || async {
        let store = anykv::open(&url).await?;
        let exists = store.exists("probe").await;
        let _ = store.close().await;
        exists
    })
    .await
    .map_err(|e| format!("{e}\n{}", server.log_tail()))?;
    let back = Instant::now();

    let bound = caps.session_ttl + Duration::from_secs(5);
    wait_until(bound, || one_leader().len() == 1)
        .await
        .map_err(|_| {
            format!(
                "no single leader within {bound:?} after the restart: leaders {:?}",
                one_leader()
            )
        })?;
    let recovered = back.elapsed();
    // Still exactly one a little later: not a flap.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = one_leader();
    if after.len() != 1 {
        return Err(format!("leaders after recovery: {after:?}").into());
    }
    let leader = candidates[after[0]].node_id().to_owned();
    wait_until(Duration::from_secs(10), || {
        lock(&follower_log).last() == Some(&Some(leader.clone()))
    })
    .await
    .map_err(|_| {
        format!(
            "the follower does not show {leader}: {:?}",
            lock(&follower_log)
        )
    })?;

    let errors: usize = seen.iter().map(|s| lock(s).errors.len()).sum();
    if errors == 0 {
        return Err("no candidate reported an error during the outage".into());
    }
    for (i, log) in seen.iter().enumerate() {
        let log = lock(log);
        if log.elected_ended || log.errors_ended {
            return Err(format!("node-{i}'s campaign ended: {:?}", log.errors).into());
        }
    }
    println!(
        "    [outage] {}: leader node-{before} before; node-{} elected {recovered:?} after the server answered again; {errors} errors reported, e.g. {:?}",
        server.name,
        after[0],
        seen.iter().find_map(|s| lock(s).errors.first().cloned()).unwrap_or_default()
    );

    for candidate in &candidates {
        candidate.stop().await;
    }
    for reader in readers {
        let _ = tokio::time::timeout(Duration::from_secs(10), reader).await;
    }
    follower.abort();
    for store in stores {
        let _ = store.delete_tree("").await;
        let _ = store.close().await;
    }
    let _ = probe.close().await;
    Ok(Completion::Completed)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn wait_until(within: Duration, mut check: impl FnMut() -> bool) -> Result<(), ()> {
    let deadline = Instant::now() + within;
    while !check() {
        if Instant::now() > deadline {
            return Err(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
