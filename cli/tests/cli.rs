//! The `anykv` binary against the real servers of every backend.
//!
//! Each backend's trials read its `ANYKV_TEST_*_URL`; without it they are
//! ignored with the reason, and fail under CI (`CI=true`). Every trial works
//! below a namespace of its own (`cli-<pid>-<time>/<trial>`) and deletes it
//! at the end. Trials that need no server use `memory://` or unreachable
//! loopback addresses.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use libtest_mimic::{Arguments, Completion, Failed, Trial};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_anykv");

/// Exit codes the CLI documents.
mod code {
    pub const USAGE: i32 = 2;
    pub const NOT_FOUND: i32 = 3;
    pub const PRECONDITION: i32 = 4;
    pub const UNAVAILABLE: i32 = 6;
    pub const LOST: i32 = 7;
    pub const COMMAND_NOT_FOUND: i32 = 127;
}

/// How long any single CLI call may take before the trial fails.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// The bound on the time from a lock's loss to its command's SIGTERM.
const LOSS_TO_SIGTERM: Duration = Duration::from_secs(1);

type TrialResult = Result<(), Failed>;

/// A backend trial: the URL of its namespace and the backend.
type Case = fn(&str, Backend) -> TrialResult;

#[derive(Clone, Copy)]
struct Backend {
    name: &'static str,
    env: &'static str,
    /// Options added to the URL (short sessions, as the conformance suites use).
    query: &'static str,
    /// How long after its holder's death a lock may still be held: session
    /// TTL plus the backend's reaping slack, plus margin for a loaded machine.
    takeover: Duration,
    /// Whether the lock and election trials run here (rediss repeats redis').
    locks: bool,
}

const BACKENDS: &[Backend] = &[
    Backend {
        name: "etcd",
        env: "ANYKV_TEST_ETCD_URL",
        query: "session_ttl=3s",
        takeover: Duration::from_secs(10),
        locks: true,
    },
    Backend {
        name: "consul",
        env: "ANYKV_TEST_CONSUL_URL",
        // Consul's shortest session TTL; it reaps within 2×TTL.
        query: "session_ttl=10s",
        takeover: Duration::from_secs(30),
        locks: true,
    },
    Backend {
        name: "zookeeper",
        env: "ANYKV_TEST_ZK_URL",
        query: "session_ttl=3s",
        takeover: Duration::from_secs(12),
        locks: true,
    },
    Backend {
        name: "redis",
        env: "ANYKV_TEST_REDIS_URL",
        query: "session_ttl=3s",
        takeover: Duration::from_secs(10),
        locks: true,
    },
    Backend {
        name: "rediss",
        env: "ANYKV_TEST_REDISS_URL",
        query: "session_ttl=3s",
        takeover: Duration::from_secs(10),
        locks: false,
    },
];

fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// `base` (which may carry a path and query of its own) + `/namespace` + `query`.
fn join_url(base: &str, namespace: &str, query: &str) -> String {
    let (base, base_query) = base.split_once('?').unwrap_or((base, ""));
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

/// A namespace no other run or trial uses.
fn unique_namespace(trial: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("cli-{}-{nanos}/{trial}", std::process::id())
}

/// A scratch directory for a trial's files, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(unique_namespace(name).replace('/', "-"));
        std::fs::create_dir_all(&dir).expect("create a scratch directory");
        Scratch(dir)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The outcome of one CLI call.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: String,
}

impl Run {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    fn json_lines(&self) -> Result<Vec<Value>, Failed> {
        self.stdout()
            .lines()
            .map(|line| {
                serde_json::from_str(line).map_err(|e| format!("not JSON: {line:?}: {e}").into())
            })
            .collect()
    }
    fn expect(self, code: i32, what: &str) -> Result<Run, Failed> {
        if self.code == Some(code) {
            Ok(self)
        } else {
            Err(format!("{what}: expected exit {code}, got {self:?}").into())
        }
    }
}

/// The binary with `--url url` (when given) and `args`, ANYKV_URL unset.
fn command(url: Option<&str>, args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command.env_remove("ANYKV_URL");
    if let Some(url) = url {
        command.arg("--url").arg(url);
    }
    command.args(args);
    command
}

/// Runs the binary to its end (killed after [`CALL_TIMEOUT`]).
fn call(url: Option<&str>, args: &[&str], stdin: Option<&[u8]>) -> Result<Run, Failed> {
    let mut command = command(url, args);
    call_command(&mut command, stdin)
}

fn call_command(command: &mut Command, stdin: Option<&[u8]>) -> Result<Run, Failed> {
    command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start {BIN}: {e}"))?;
    if let (Some(bytes), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(bytes)
            .map_err(|e| format!("cannot write stdin: {e}"))?;
    }
    let stdout = reader(child.stdout.take());
    let stderr = reader(child.stderr.take());
    let status = wait_until(&mut child, Instant::now() + CALL_TIMEOUT)?;
    let stdout = stdout.join().unwrap_or_default();
    let stderr = String::from_utf8_lossy(&stderr.join().unwrap_or_default()).into_owned();
    match status {
        Some(code) => Ok(Run {
            code,
            stdout,
            stderr,
        }),
        None => {
            Err(format!("{command:?} did not end within {CALL_TIMEOUT:?}; stderr: {stderr}").into())
        }
    }
}

fn reader(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        bytes
    })
}

/// Waits for `child` until `deadline`: `Some(exit code)` (None inside if
/// it died by a signal), or `None` after killing it at the deadline.
fn wait_until(child: &mut Child, deadline: Instant) -> Result<Option<Option<i32>>, Failed> {
    loop {
        if let Some(status) = child.try_wait().map_err(|e| format!("wait: {e}"))? {
            return Ok(Some(status.code()));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A long-running CLI process (watch, lock, elect), killed when dropped.
struct Background {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: std::thread::JoinHandle<Vec<u8>>,
}

impl Background {
    fn start(url: &str, args: &[&str]) -> Result<Background, Failed> {
        let mut command = command(Some(url), args);
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start {BIN}: {e}"))?;
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take();
        std::thread::spawn(move || {
            if let Some(stdout) = stdout {
                for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }
        });
        let stderr = reader(child.stderr.take());
        Ok(Background {
            child,
            lines,
            stderr,
        })
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(i32::MAX))
    }

    /// The next stdout line as JSON, within `timeout`.
    fn next_json(&self, timeout: Duration) -> Result<Value, Failed> {
        let line = self
            .lines
            .recv_timeout(timeout)
            .map_err(|e| format!("no output line within {timeout:?}: {e}"))?;
        serde_json::from_str(&line).map_err(|e| format!("not JSON: {line:?}: {e}").into())
    }

    fn signal(&self, signal: Signal) -> TrialResult {
        kill(self.pid(), signal).map_err(|e| format!("kill {signal}: {e}").into())
    }

    /// Waits for the end within `timeout`: the exit code and stderr.
    fn finish(mut self, timeout: Duration) -> Result<(Option<i32>, String), Failed> {
        let status = wait_until(&mut self.child, Instant::now() + timeout)?;
        let stderr = std::mem::replace(&mut self.stderr, std::thread::spawn(Vec::new));
        let stderr = String::from_utf8_lossy(&stderr.join().unwrap_or_default()).into_owned();
        match status {
            Some(code) => Ok((code, stderr)),
            None => Err(format!("the CLI did not end within {timeout:?}; stderr: {stderr}").into()),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A shell script for `lock`/`elect`: appends `start <token> <pid>` to
/// `log` when started and `term` when it gets SIGTERM (then exits 0), and
/// otherwise waits up to 30 s. Its `sleep` holds none of the CLI's pipes,
/// so the CLI's output ends with the CLI.
fn recording_script(scratch: &Scratch, log: &Path) -> Result<PathBuf, Failed> {
    let script = scratch.path("child.sh");
    let text = format!(
        "#!/bin/sh\n\
         trap 'echo term >> {log}; kill $sleeper 2>/dev/null; exit 0' TERM\n\
         echo \"start $ANYKV_FENCING_TOKEN $$\" >> {log}\n\
         sleep 30 < /dev/null > /dev/null 2>&1 &\n\
         sleeper=$!\n\
         wait $sleeper\n",
        log = log.display()
    );
    std::fs::write(&script, text).map_err(|e| format!("write script: {e}"))?;
    let chmod = Command::new("chmod").arg("+x").arg(&script).status();
    if !chmod.is_ok_and(|s| s.success()) {
        return Err("chmod +x failed".into());
    }
    Ok(script)
}

fn log_lines(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Polls `log` every 5 ms until it has `count` lines starting with `word`,
/// within `timeout`; those lines.
fn wait_for_lines(
    log: &Path,
    word: &str,
    count: usize,
    timeout: Duration,
) -> Result<Vec<String>, Failed> {
    let deadline = Instant::now() + timeout;
    loop {
        let lines: Vec<String> = log_lines(log)
            .into_iter()
            .filter(|l| l.split(' ').next() == Some(word))
            .collect();
        if lines.len() >= count {
            return Ok(lines);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{log:?}: not {count} {word:?} lines within {timeout:?}: {:?}",
                log_lines(log)
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The token and pid of a `start <token> <pid>` line.
fn start_line(line: &str) -> Result<(u64, i32), Failed> {
    let mut parts = line.split(' ').skip(1);
    let token = parts.next().and_then(|t| t.parse::<u64>().ok());
    let pid = parts.next().and_then(|p| p.parse::<i32>().ok());
    match (token, pid) {
        (Some(token), Some(pid)) => Ok((token, pid)),
        _ => Err(format!("bad start line (no ANYKV_FENCING_TOKEN?): {line:?}").into()),
    }
}

/// True while `pid` runs (a zombie counts as ended).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

fn check(condition: bool, message: impl FnOnce() -> String) -> TrialResult {
    if condition {
        Ok(())
    } else {
        Err(message().into())
    }
}

/// Deletes `key` below `url` through the library, as an operator would;
/// returns the instant just before the delete was sent.
fn operator_delete(url: &str, key: &str) -> Result<Instant, Failed> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    runtime.block_on(async {
        let store = anykv::open(url)
            .await
            .map_err(|e| format!("open {url}: {e}"))?;
        let sent = Instant::now();
        let deleted = anykv::StoreExt::delete(&*store, key).await;
        let _ = store.close().await;
        deleted.map_err(|e| format!("delete {key}: {e}"))?;
        Ok(sent)
    })
}

/// Removes the trial's namespace.
fn clean(url: &str) {
    let _ = call(Some(url), &["rm", "--recursive", ""], None);
}

// ---------------------------------------------------------------- trials

fn kv_round_trip(url: &str) -> TrialResult {
    let put = call(Some(url), &["put", "app/one", "1"], None)?.expect(0, "put")?;
    check(put.stdout().contains("app/one"), || format!("{put:?}"))?;
    let got = call(Some(url), &["get", "app/one"], None)?.expect(0, "get")?;
    check(got.stdout() == "1\n", || format!("get: {got:?}"))?;

    // Binary from stdin; --raw gives the bytes back, --json base64.
    let binary = [0xffu8, 0x00, 0x01, b'\n'];
    call(Some(url), &["put", "app/bin", "-"], Some(&binary))?.expect(0, "put -")?;
    let raw = call(Some(url), &["get", "--raw", "app/bin"], None)?.expect(0, "get --raw")?;
    check(raw.stdout == binary, || format!("get --raw: {raw:?}"))?;
    let json = call(Some(url), &["--json", "get", "app/bin"], None)?.expect(0, "get --json")?;
    let object = &json.json_lines()?[0];
    check(object["encoding"] == "base64", || format!("{object}"))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(object["value"].as_str().unwrap_or_default())
        .map_err(|e| format!("base64: {e}"))?;
    check(decoded == binary, || format!("{object}"))?;

    // ls --json: every key with its fields, sorted.
    call(Some(url), &["put", "--ttl", "30s", "app/ttl", "t"], None)?.expect(0, "put --ttl")?;
    let listed = call(Some(url), &["--json", "ls", "app"], None)?.expect(0, "ls")?;
    let lines = listed.json_lines()?;
    let keys: Vec<&str> = lines.iter().filter_map(|l| l["key"].as_str()).collect();
    check(keys == ["app/bin", "app/one", "app/ttl"], || {
        format!("ls: {lines:?}")
    })?;
    let one = &lines[1];
    check(
        one["value"] == "1" && one["encoding"] == "utf-8" && one["version"].is_u64(),
        || format!("ls line: {one}"),
    )?;
    let version = one["version"].as_u64().unwrap_or_default();

    // Preconditions: exit 4, naming the key.
    let exists = call(Some(url), &["put", "--create", "app/one", "x"], None)?
        .expect(code::PRECONDITION, "put --create on an existing key")?;
    check(exists.stderr.contains("app/one"), || format!("{exists:?}"))?;
    let stale = (version + 1).to_string();
    call(
        Some(url),
        &["put", "--if-version", &stale, "app/one", "x"],
        None,
    )?
    .expect(code::PRECONDITION, "put --if-version with a stale version")?;
    let current = version.to_string();
    let updated = call(
        Some(url),
        &["--json", "put", "--if-version", &current, "app/one", "2"],
        None,
    )?
    .expect(0, "put --if-version with the current version")?;
    let new_version = updated.json_lines()?[0]["version"]
        .as_u64()
        .unwrap_or_default();
    check(new_version > version, || format!("{updated:?}"))?;
    call(
        Some(url),
        &["rm", "--if-version", &current, "app/one"],
        None,
    )?
    .expect(code::PRECONDITION, "rm --if-version with a stale version")?;
    call(Some(url), &["rm", "app/one"], None)?.expect(0, "rm")?;

    // A missing key: exit 3, naming the key.
    let missing = call(Some(url), &["get", "app/one"], None)?.expect(code::NOT_FOUND, "get")?;
    check(missing.stderr.contains("app/one"), || {
        format!("{missing:?}")
    })?;
    check(!missing.stderr.contains("panicked"), || {
        format!("{missing:?}")
    })?;

    call(Some(url), &["rm", "--recursive", "app"], None)?.expect(0, "rm --recursive")?;
    let empty = call(Some(url), &["ls"], None)?.expect(0, "ls after rm -r")?;
    check(empty.stdout.is_empty(), || format!("{empty:?}"))
}

fn queue(url: &str) -> TrialResult {
    let empty = call(Some(url), &["queue", "pop", "--no-wait", "jobs"], None)?;
    let empty = empty.expect(3, "pop --no-wait on an empty queue")?;
    check(
        empty.stderr.contains("jobs") && empty.stderr.contains("empty"),
        || format!("{empty:?}"),
    )?;
    for item in ["first", "second"] {
        call(Some(url), &["queue", "push", "jobs", item], None)?.expect(0, "queue push")?;
    }
    let len = call(Some(url), &["queue", "len", "jobs"], None)?.expect(0, "queue len")?;
    check(len.stdout() == "2\n", || format!("len: {len:?}"))?;
    let first = call(Some(url), &["queue", "pop", "jobs"], None)?.expect(0, "queue pop")?;
    check(first.stdout() == "first\n", || format!("FIFO: {first:?}"))?;
    let second = call(Some(url), &["--json", "queue", "pop", "jobs"], None)?;
    let second = second.expect(0, "queue pop --json")?;
    let line = &second.json_lines()?[0];
    check(
        line["item"] == "second" && line["queue"] == "jobs" && line["attempt"] == 1,
        || format!("pop --json: {line}"),
    )?;
    let len = call(Some(url), &["queue", "len", "jobs"], None)?.expect(0, "queue len")?;
    check(len.stdout() == "0\n", || {
        format!("popped items are gone: {len:?}")
    })
}

/// `members`: an instance registered through the library is listed, and
/// gone after it deregisters.
fn members(url: &str) -> TrialResult {
    use anykv_recipes::discovery::{Discovery, Instance};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let (store, registration) = runtime.block_on(async {
        let store = anykv::open(url)
            .await
            .map_err(|e| format!("open {url}: {e}"))?;
        let instance = Instance::new("web", "web-1", "10.0.0.1:80").with_metadata("zone", "a");
        let registration = Discovery::new(store.clone(), "services")
            .register(instance)
            .await
            .map_err(|e| format!("register: {e}"))?;
        Ok::<_, Failed>((store, registration))
    })?;
    let listed = call(Some(url), &["members", "web"], None)?.expect(0, "members")?;
    check(listed.stdout() == "web-1 10.0.0.1:80 zone=a\n", || {
        format!("members: {listed:?}")
    })?;
    let json = call(Some(url), &["--json", "members", "web"], None)?.expect(0, "members --json")?;
    let line = &json.json_lines()?[0];
    check(
        line["service"] == "web" && line["instances"][0]["id"] == "web-1",
        || format!("members --json: {line}"),
    )?;
    runtime.block_on(async {
        registration
            .deregister()
            .await
            .map_err(|e| format!("deregister: {e}"))?;
        let _ = store.close().await;
        Ok::<_, Failed>(())
    })?;
    let empty = call(Some(url), &["--json", "members", "web"], None)?.expect(0, "members")?;
    let line = &empty.json_lines()?[0];
    check(line["instances"] == serde_json::json!([]), || {
        format!("after deregister: {line}")
    })
}

fn watch(url: &str) -> TrialResult {
    let first = Duration::from_secs(10);
    let watcher = Background::start(url, &["--json", "watch", "w/key"])?;
    let line = watcher.next_json(first)?;
    check(line["event"] == "delete" && line["key"] == "w/key", || {
        format!("first: {line}")
    })?;
    let tree = Background::start(url, &["--json", "watch-tree", "w"])?;
    // The tree watch's first listing is empty: nothing is printed, so
    // give it time to be established before writing.
    std::thread::sleep(Duration::from_millis(500));
    call(Some(url), &["put", "w/key", "v1"], None)?.expect(0, "put")?;
    let line = watcher.next_json(first)?;
    check(
        line["event"] == "put" && line["value"] == "v1" && line["version"].is_u64(),
        || format!("put event: {line}"),
    )?;
    let line = tree.next_json(first)?;
    check(
        line["event"] == "put" && line["key"] == "w/key" && line["value"] == "v1",
        || format!("tree put event: {line}"),
    )?;
    call(Some(url), &["rm", "w/key"], None)?.expect(0, "rm")?;
    let line = watcher.next_json(first)?;
    check(line["event"] == "delete", || {
        format!("delete event: {line}")
    })?;
    let line = tree.next_json(first)?;
    check(line["event"] == "delete" && line["key"] == "w/key", || {
        format!("tree delete event: {line}")
    })?;
    // SIGTERM and SIGINT end a watch normally.
    watcher.signal(Signal::SIGTERM)?;
    tree.signal(Signal::SIGINT)?;
    let (code, stderr) = watcher.finish(Duration::from_secs(10))?;
    check(code == Some(0), || format!("watch exit {code:?}: {stderr}"))?;
    let (code, stderr) = tree.finish(Duration::from_secs(10))?;
    check(code == Some(0), || {
        format!("watch-tree exit {code:?}: {stderr}")
    })
}

fn lock_lost(url: &str) -> TrialResult {
    let scratch = Scratch::new("lock-lost");
    let log = scratch.path("log");
    let script = recording_script(&scratch, &log)?;
    let script = script.to_string_lossy();
    let holder = Background::start(
        url,
        &[
            "lock", "--id", "holder-1", "--grace", "5s", "jobs/l", "--", &script,
        ],
    )?;
    let start = wait_for_lines(&log, "start", 1, Duration::from_secs(15))?;
    let (token, _) = start_line(&start[0])?;
    check(token > 0, || format!("token {token}"))?;
    let held = call(Some(url), &["get", "jobs/l"], None)?.expect(0, "get the lock key")?;
    check(held.stdout() == "holder-1\n", || format!("{held:?}"))?;

    let deleted = operator_delete(url, "jobs/l")?;
    wait_for_lines(&log, "term", 1, Duration::from_secs(5))?;
    let after = deleted.elapsed();
    eprintln!("lock key deleted -> SIGTERM seen: {after:?}");
    check(after <= LOSS_TO_SIGTERM, || {
        format!("SIGTERM came {after:?} after the lock key was deleted")
    })?;
    let (code, stderr) = holder.finish(Duration::from_secs(10))?;
    check(code == Some(code::LOST), || {
        format!("lock exit {code:?} (expected {}): {stderr}", code::LOST)
    })?;
    check(stderr.contains("jobs/l") && stderr.contains("lost"), || {
        stderr.clone()
    })
}

fn lock_exit_code(url: &str) -> TrialResult {
    let scratch = Scratch::new("lock-code");
    let token_file = scratch.path("token");
    let body = format!(
        "echo \"$ANYKV_FENCING_TOKEN\" > {}; exit 3",
        token_file.display()
    );
    // The command's exit code is passed through, the lock then free at once.
    call(
        Some(url),
        &["lock", "jobs/c", "--", "sh", "-c", &body],
        None,
    )?
    .expect(3, "lock with a command exiting 3")?;
    let first: u64 = std::fs::read_to_string(&token_file)
        .unwrap_or_default()
        .trim()
        .parse()
        .map_err(|e| format!("ANYKV_FENCING_TOKEN: {e}"))?;
    let body = format!("echo \"$ANYKV_FENCING_TOKEN\" > {}", token_file.display());
    call(
        Some(url),
        &["lock", "--try", "jobs/c", "--", "sh", "-c", &body],
        None,
    )?
    .expect(0, "lock --try right after the first lock ended")?;
    let second: u64 = std::fs::read_to_string(&token_file)
        .unwrap_or_default()
        .trim()
        .parse()
        .map_err(|e| format!("second ANYKV_FENCING_TOKEN: {e}"))?;
    check(second > first, || format!("tokens {first} then {second}"))?;

    // Held: --try fails with 4; SIGTERM to the holder reaches its command.
    let log = scratch.path("log");
    let script = recording_script(&scratch, &log)?;
    let script = script.to_string_lossy();
    let holder = Background::start(url, &["lock", "jobs/c", "--", &script])?;
    wait_for_lines(&log, "start", 1, Duration::from_secs(15))?;
    call(Some(url), &["lock", "--try", "jobs/c", "--", "true"], None)?
        .expect(code::PRECONDITION, "lock --try while held")?;
    holder.signal(Signal::SIGTERM)?;
    wait_for_lines(&log, "term", 1, Duration::from_secs(5))?;
    let (code, stderr) = holder.finish(Duration::from_secs(10))?;
    check(code == Some(0), || {
        format!("holder exit {code:?}: {stderr}")
    })?;
    call(Some(url), &["lock", "--try", "jobs/c", "--", "true"], None)?
        .expect(0, "lock --try after the holder ended")?;
    Ok(())
}

fn elect_takeover(url: &str, backend: Backend) -> TrialResult {
    let scratch = Scratch::new("elect");
    let log_a = scratch.path("a");
    let log_b = scratch.path("b");
    let script_a = recording_script(&scratch, &log_a)?;
    let script_b = script_a.with_file_name("child-b.sh");
    std::fs::write(
        &script_b,
        std::fs::read_to_string(&script_a)
            .unwrap_or_default()
            .replace(&*log_a.to_string_lossy(), &log_b.to_string_lossy()),
    )
    .map_err(|e| format!("write script: {e}"))?;
    let _ = Command::new("chmod").arg("+x").arg(&script_b).status();
    let (script_a, script_b) = (script_a.to_string_lossy(), script_b.to_string_lossy());

    let a = Background::start(
        url,
        &["elect", "--id", "node-a", "svc/leader", "--", &script_a],
    )?;
    let started = wait_for_lines(&log_a, "start", 1, Duration::from_secs(15))?;
    let (token_a, pid_a) = start_line(&started[0])?;
    let b = Background::start(
        url,
        &["elect", "--id", "node-b", "svc/leader", "--", &script_b],
    )?;
    let follower = Background::start(url, &["--json", "follow", "svc/leader"])?;
    let line = follower.next_json(Duration::from_secs(10))?;
    check(line["leader"] == "node-a", || format!("follow: {line}"))?;
    // b is not leader while a lives: its command does not run.
    std::thread::sleep(Duration::from_secs(1));
    check(log_lines(&log_b).is_empty(), || {
        format!("b ran while a led: {:?}", log_lines(&log_b))
    })?;

    // SIGKILL a: its command dies with it, and b takes over.
    a.signal(Signal::SIGKILL)?;
    let killed = Instant::now();
    let deadline = killed + Duration::from_secs(3);
    while alive(pid_a) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    check(!alive(pid_a), || {
        "a's command outlived the SIGKILLed CLI".to_owned()
    })?;
    let started = wait_for_lines(&log_b, "start", 1, backend.takeover)?;
    let (token_b, _) = start_line(&started[0])?;
    check(token_b > token_a, || {
        format!("tokens {token_a} then {token_b}")
    })?;
    let mut leader = follower.next_json(backend.takeover)?;
    while leader["leader"].is_null() {
        leader = follower.next_json(backend.takeover)?;
    }
    check(leader["leader"] == "node-b", || format!("follow: {leader}"))?;

    // The leadership lost: b's command is ended at once, and b, campaigning
    // again, starts a fresh one in its next term.
    let deleted = operator_delete(url, "svc/leader")?;
    wait_for_lines(&log_b, "term", 1, Duration::from_secs(5))?;
    let after = deleted.elapsed();
    eprintln!("election key deleted -> SIGTERM seen: {after:?}");
    check(after <= LOSS_TO_SIGTERM, || {
        format!("SIGTERM came {after:?} after the election key was deleted")
    })?;
    let restarted = wait_for_lines(&log_b, "start", 2, backend.takeover)?;
    let (token_b2, _) = start_line(&restarted[1])?;
    check(token_b2 > token_b, || {
        format!("tokens {token_b} then {token_b2}")
    })?;

    // SIGTERM to b reaches its command; b exits with the command's 0.
    b.signal(Signal::SIGTERM)?;
    wait_for_lines(&log_b, "term", 2, Duration::from_secs(5))?;
    let (code, stderr) = b.finish(Duration::from_secs(10))?;
    check(code == Some(0), || format!("b exit {code:?}: {stderr}"))?;
    drop(a);
    follower.signal(Signal::SIGTERM)?;
    let _ = follower.finish(Duration::from_secs(10))?;
    Ok(())
}

fn elect_once(url: &str) -> TrialResult {
    let scratch = Scratch::new("elect-once");
    let log = scratch.path("log");
    let script = recording_script(&scratch, &log)?;
    let script = script.to_string_lossy();
    let candidate = Background::start(url, &["elect", "--once", "svc/once", "--", &script])?;
    wait_for_lines(&log, "start", 1, Duration::from_secs(15))?;
    operator_delete(url, "svc/once")?;
    wait_for_lines(&log, "term", 1, Duration::from_secs(5))?;
    let (code, stderr) = candidate.finish(Duration::from_secs(10))?;
    check(code == Some(code::LOST), || {
        format!("elect --once exit {code:?}: {stderr}")
    })
}

// ------------------------------------------------- trials without servers

fn bad_urls_and_secrets() -> TrialResult {
    let secret = "s3cr3t";
    // Unreachable: exit 6, the URL named (redacted), the password nowhere.
    let url = "redis://:s3cr3t@127.0.0.1:1/x?connect_timeout=1s";
    let run = call(Some(url), &["get", "k"], None)?.expect(code::UNAVAILABLE, url)?;
    check(run.stderr.contains("127.0.0.1:1"), || format!("{run:?}"))?;
    check(
        !run.stderr.contains(secret) && !run.stdout().contains(secret),
        || format!("secret shown: {run:?}"),
    )?;
    // Invalid: exit 2.
    for url in [
        "etcd://u:s3cr3t@127.0.0.1:1/x?session_ttl=soon",
        "consul://127.0.0.1:1/x?token=s3cr3t&bogus=1",
        "bogus://u:s3cr3t@h/x",
    ] {
        let run = call(Some(url), &["get", "k"], None)?.expect(code::USAGE, url)?;
        check(
            !run.stderr.contains(secret) && run.stderr.contains("URL"),
            || format!("{url}: {run:?}"),
        )?;
    }
    // The URL from the environment, with a password: not in --help either.
    let mut with_env = command(None, &["--help"]);
    with_env.env("ANYKV_URL", "redis://:s3cr3t@127.0.0.1:1/x");
    let help = call_command(&mut with_env, None)?.expect(0, "--help")?;
    check(!help.stdout().contains(secret), || {
        "--help shows the secret".into()
    })?;
    check(
        help.stdout().contains("etcd://") && help.stdout().contains("Exit codes"),
        || help.stdout(),
    )?;
    let mut with_env = command(None, &["get", "k"]);
    with_env.env(
        "ANYKV_URL",
        "redis://:s3cr3t@127.0.0.1:1/x?connect_timeout=1s",
    );
    let run = call_command(&mut with_env, None)?.expect(code::UNAVAILABLE, "ANYKV_URL")?;
    check(!run.stderr.contains(secret), || format!("{run:?}"))?;
    Ok(())
}

fn usage_errors() -> TrialResult {
    let run = call(None, &["get", "k"], None)?.expect(code::USAGE, "no URL")?;
    check(run.stderr.contains("ANYKV_URL"), || format!("{run:?}"))?;
    call(Some("memory://"), &["put"], None)?.expect(code::USAGE, "put without key")?;
    call(Some("memory://"), &["lock", "k"], None)?.expect(code::USAGE, "lock without CMD")?;
    call(Some("memory://"), &["put", "--ttl", "soon", "k", "v"], None)?
        .expect(code::USAGE, "bad --ttl")?;
    let run = call(
        Some("memory://"),
        &["lock", "k", "--", "/nonexistent/anykv-test-command"],
        None,
    )?
    .expect(code::COMMAND_NOT_FOUND, "lock with a missing command")?;
    check(run.stderr.contains("anykv-test-command"), || {
        format!("{run:?}")
    })?;
    let script = call(None, &["completions", "bash"], None)?.expect(0, "completions")?;
    check(script.stdout().contains("anykv"), || script.stdout())
}

fn main() {
    let mut args = Arguments::from_args();
    // Most trials wait on servers and child processes, not on the CPU.
    if args.test_threads.is_none() {
        args.test_threads = Some(8);
    }
    let mut trials = vec![
        Trial::test("no_server::bad_urls_and_secrets", bad_urls_and_secrets),
        Trial::test("no_server::usage_errors", usage_errors),
    ];
    for &backend in BACKENDS {
        let mut cases: Vec<(&str, Case)> = vec![
            ("kv_round_trip", |url, _| kv_round_trip(url)),
            ("watch", |url, _| watch(url)),
            ("queue_push_pop_len", |url, _| queue(url)),
            ("members", |url, _| members(url)),
        ];
        if backend.locks {
            cases.push(("lock_lost_ends_the_command", |url, _| lock_lost(url)));
            cases.push(("lock_passes_the_exit_code", |url, _| lock_exit_code(url)));
            cases.push(("elect_takeover", elect_takeover));
            cases.push(("elect_once", |url, _| elect_once(url)));
        }
        for (name, case) in cases {
            let trial_name = format!("{}::{name}", backend.name);
            trials.push(
                Trial::ignorable_test(trial_name, move || match std::env::var(backend.env) {
                    Ok(base) if !base.is_empty() => {
                        let url = join_url(&base, &unique_namespace(name), backend.query);
                        let began = Instant::now();
                        let result = case(&url, backend);
                        clean(&url);
                        eprintln!("{}::{name} took {:?}", backend.name, began.elapsed());
                        result.map(|()| Completion::Completed)
                    }
                    _ => {
                        let reason = format!(
                            "{} is not set: start the servers with scripts/services.sh and export its env",
                            backend.env
                        );
                        if under_ci() {
                            Err(format!("{reason} (required under CI)").into())
                        } else {
                            Ok(Completion::ignored_with(reason))
                        }
                    }
                })
                .with_kind(backend.name),
            );
        }
    }
    libtest_mimic::run(&args, trials).exit()
}
