//! The driver: starts a backend's cluster, the fenced resource and the
//! workload children, injects the faults, records what it did, and hands
//! the merged history to the checker.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::checker::{self, Params, Report};
use crate::cluster::process::BoxError;
use crate::history::{now, Event, History};
use crate::proxy::Mode;
use crate::resource::FencedResource;
use crate::target::{self, Fault, Target};

/// How a run goes.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The `nemesis` binary, started again as each child.
    pub exe: PathBuf,
    /// Where clusters keep their data and logs.
    pub dir: PathBuf,
    /// Every fault this many times (at least once).
    pub rounds: usize,
    /// At least this many handovers per backend.
    pub min_handovers: usize,
    /// Stop injecting after this long per backend (the run then ends after
    /// the fault in progress).
    pub time_limit: Duration,
    /// Calm time between faults (voluntary handovers only).
    pub calm: Duration,
    /// Shortest and longest term a leader holds before resigning (ms).
    pub hold: (u64, u64),
}

/// Per-fault figures of one backend's run.
#[derive(Clone, Debug, Default)]
pub struct FaultRow {
    /// How often it was injected.
    pub runs: usize,
    /// Terms that began while it was the latest fault.
    pub handovers: usize,
    /// Of those, the ones that began while it was in force (between the
    /// injection and its heal): handovers the fault forced.
    pub forced: usize,
    /// Overlaps (violations) that began then.
    pub overlaps: usize,
    /// Overlaps under a documented limit that began then.
    pub expected: usize,
    /// The longest of either (ns).
    pub largest_overlap: u64,
    /// Token inversions then.
    pub inversions: usize,
    /// Longest time to a leader after its heal (ns).
    pub largest_recovery: u64,
    /// Its recovery bound (ns).
    pub bound: u64,
}

/// One backend's outcome.
#[derive(Debug)]
pub struct Outcome {
    /// The backend.
    pub backend: &'static str,
    /// The checker's verdict over the whole run.
    pub report: Report,
    /// Per fault ("none" is the time before the first fault).
    pub rows: BTreeMap<String, FaultRow>,
    /// Wall time of the run.
    pub took: Duration,
    /// Problems of the run itself (a cluster that did not come back, …).
    pub run_errors: Vec<String>,
}

struct Kid {
    node: String,
    member: usize,
    candidate: bool,
    process: Child,
    stdin: Option<tokio::process::ChildStdin>,
}

/// The events every child and the driver recorded, shared with the
/// readers of the children's stdout.
#[derive(Clone, Default)]
struct Log {
    events: Arc<Mutex<Vec<Event>>>,
}

impl Log {
    fn push(&self, e: Event) {
        if let Ok(mut v) = self.events.lock() {
            v.push(e);
        }
    }

    fn snapshot(&self) -> Vec<Event> {
        self.events.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// The node leading now (an open term), if any.
    fn leader(&self) -> Option<String> {
        let events = self.events.lock().ok()?;
        let mut open: BTreeMap<&str, u64> = BTreeMap::new();
        for e in events.iter() {
            match e {
                Event::TermStart { node, token, .. } => {
                    open.insert(node, *token);
                }
                Event::TermEnd { node, .. } | Event::Killed { node, .. } => {
                    open.remove(node.as_str());
                }
                _ => {}
            }
        }
        // Under a fault two may be open for a moment; the newest term is
        // the one the store granted last.
        let mut newest: Option<(&str, u64)> = None;
        for (node, token) in open {
            if newest.is_none_or(|(_, t)| token > t) {
                newest = Some((node, token));
            }
        }
        newest.map(|(n, _)| n.to_string())
    }

    fn terms_started(&self) -> usize {
        self.events
            .lock()
            .map(|v| {
                v.iter()
                    .filter(|e| matches!(e, Event::TermStart { .. }))
                    .count()
            })
            .unwrap_or(0)
    }

    /// True when every follower's latest report names `leader`.
    fn followers_name(&self, followers: &[String], leader: &str) -> bool {
        let Ok(events) = self.events.lock() else {
            return false;
        };
        followers.iter().all(|f| {
            events
                .iter()
                .rev()
                .find_map(|e| match e {
                    Event::Follow {
                        follower, leader, ..
                    } if follower == f => Some(leader.clone()),
                    _ => None,
                })
                .flatten()
                .as_deref()
                == Some(leader)
        })
    }
}

struct Run {
    target: Box<dyn Target>,
    settings: Settings,
    log: Log,
    resource: FencedResource,
    kids: Vec<Kid>,
    generation: usize,
    namespace: String,
    key: &'static str,
    bound: Duration,
    hold: Duration,
    run_errors: Vec<String>,
    holding: bool,
}

impl Run {
    async fn spawn(
        &mut self,
        node: String,
        member: usize,
        candidate: bool,
    ) -> Result<(), BoxError> {
        let url = self
            .target
            .url(member, &self.namespace, self.target.query());
        let mut command = Command::new(&self.settings.exe);
        command
            .arg("child")
            .arg("--url")
            .arg(&url)
            .arg("--key")
            .arg(self.key)
            .arg("--node")
            .arg(&node)
            .arg("--resource")
            .arg(self.resource.addr().to_string())
            .arg("--hold-ms")
            .arg(format!("{}-{}", self.settings.hold.0, self.settings.hold.1));
        if !candidate {
            command.arg("--follower");
        }
        let log = std::fs::File::options().create(true).append(true).open(
            self.settings
                .dir
                .join(format!("{}-{node}.log", self.target.backend())),
        )?;
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        let mut process = command.spawn()?;
        let stdout = process.stdout.take().ok_or("child has no stdout")?;
        let stdin = process.stdin.take();
        let log = self.log.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(e) = Event::from_line(&line) {
                    log.push(e);
                }
            }
        });
        self.kids.push(Kid {
            node,
            member,
            candidate,
            process,
            stdin,
        });
        if self.holding {
            let i = self.kids.len() - 1;
            self.tell(i, "hold").await;
        }
        Ok(())
    }

    /// Sends a command line to child `i` (see [`crate::workload::run`]).
    async fn tell(&mut self, i: usize, command: &str) {
        use tokio::io::AsyncWriteExt;
        if let Some(stdin) = self.kids[i].stdin.as_mut() {
            let _ = stdin.write_all(format!("{command}\n").as_bytes()).await;
            let _ = stdin.flush().await;
        }
    }

    /// Every candidate keeps its term (`hold`) or resigns again (`go`).
    async fn tell_all(&mut self, command: &str) {
        self.holding = command == "hold";
        for i in 0..self.kids.len() {
            if self.kids[i].candidate {
                self.tell(i, command).await;
            }
        }
    }

    fn followers(&self) -> Vec<String> {
        self.kids
            .iter()
            .filter(|k| !k.candidate)
            .map(|k| k.node.clone())
            .collect()
    }

    fn kid(&self, node: &str) -> Option<usize> {
        self.kids.iter().position(|k| k.node == node)
    }

    /// Waits (bounded) until a leader exists that `wanted` accepts; falls
    /// back to any leader.
    async fn leader_where(
        &self,
        within: Duration,
        wanted: impl Fn(&Kid) -> bool,
    ) -> Option<String> {
        let start = Instant::now();
        let mut any = None;
        while start.elapsed() < within {
            if let Some(leader) = self.log.leader() {
                if self.kid(&leader).is_some_and(|i| wanted(&self.kids[i])) {
                    return Some(leader);
                }
                any = Some(leader);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        any.or_else(|| self.log.leader())
    }

    async fn kill_kid(&mut self, i: usize) {
        let t = now();
        let _ = self.kids[i].process.start_kill();
        let _ = self.kids[i].process.wait().await;
        let node = self.kids[i].node.clone();
        self.log.push(Event::Killed { node, t });
    }

    fn signal_kid(&self, i: usize, signal: nix::sys::signal::Signal) {
        if let Some(pid) = self.kids[i]
            .process
            .id()
            .and_then(|p| i32::try_from(p).ok())
        {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
        }
    }

    /// Replaces the killed child `i` with a new one of the same role on the
    /// same member.
    async fn replace_kid(&mut self, i: usize) -> Result<(), BoxError> {
        let old = self.kids.remove(i);
        self.generation += 1;
        let base = old.node.split('.').next().unwrap_or("c").to_string();
        let node = format!("{base}.{}", self.generation);
        self.spawn(node, old.member, old.candidate).await
    }

    fn fault(&self, name: String, expected_limit: bool) {
        self.log.push(Event::Fault {
            name,
            t: now(),
            expected_limit,
        });
    }

    fn heal_event(&self, name: String) {
        self.log.push(Event::Heal {
            name,
            t: now(),
            bound: u64::try_from(self.bound.as_nanos()).unwrap_or(u64::MAX),
        });
    }

    /// Injects one fault and heals it. The leader keeps its term through
    /// the fault (every candidate is told to `hold`), so that the fault meets
    /// a leader that claims to lead until its lock is or may be lost.
    async fn inject(&mut self, fault: Fault) -> Result<(), BoxError> {
        // While terms still rotate, wait for a leader the fault wants (on a
        // client agent, or on a server), then freeze the rotation.
        let target = &self.target;
        self.leader_where(Duration::from_secs(15), |k| match fault {
            Fault::AgentKill | Fault::AgentPause => target.is_agent(k.member),
            Fault::MemberKill | Fault::MemberPause | Fault::IsolateSilent | Fault::IsolateReset => {
                !target.is_agent(k.member)
            }
            _ => true,
        })
        .await;
        self.tell_all("hold").await;
        let result = self.inject_held(fault).await;
        self.tell_all("go").await;
        result
    }

    async fn inject_held(&mut self, fault: Fault) -> Result<(), BoxError> {
        let pick = Duration::from_secs(15);
        let name = fault.name().to_string();
        match fault {
            Fault::LeaderKill | Fault::LeaderPause => {
                let Some(leader) = self.leader_where(pick, |_| true).await else {
                    return Err("no leader to fault".into());
                };
                let i = self.kid(&leader).ok_or("leader is not a child")?;
                if fault == Fault::LeaderKill {
                    self.fault(format!("{name} {leader}"), false);
                    self.kill_kid(i).await;
                    self.replace_kid(i).await?;
                } else {
                    self.fault(format!("{name} {leader}"), false);
                    self.log.push(Event::Paused {
                        node: leader.clone(),
                        t: now(),
                    });
                    self.signal_kid(i, nix::sys::signal::Signal::SIGSTOP);
                    tokio::time::sleep(self.hold).await;
                    let t = now();
                    self.signal_kid(i, nix::sys::signal::Signal::SIGCONT);
                    self.log.push(Event::Resumed { node: leader, t });
                }
                self.heal_event(name);
            }
            Fault::CandidateKill => {
                let leader = self.leader_where(pick, |_| true).await;
                let i = self
                    .kids
                    .iter()
                    .position(|k| k.candidate && Some(&k.node) != leader.as_ref())
                    .ok_or("no idle candidate")?;
                self.fault(format!("{name} {}", self.kids[i].node), false);
                self.kill_kid(i).await;
                self.replace_kid(i).await?;
                self.heal_event(name);
            }
            Fault::MemberKill | Fault::MemberPause | Fault::IsolateSilent | Fault::IsolateReset => {
                // The member the leader talks to, if it is a server.
                let target = &self.target;
                let leader = self
                    .leader_where(pick, |k| !target.is_agent(k.member))
                    .await;
                let member = leader
                    .and_then(|l| self.kid(&l))
                    .map(|i| self.kids[i].member)
                    .filter(|m| !self.target.is_agent(*m))
                    .unwrap_or(0);
                let who = self.target.name(member);
                self.fault(format!("{name} {who}"), false);
                match fault {
                    Fault::MemberKill => {
                        self.target.kill(member);
                        tokio::time::sleep(self.hold).await;
                        self.target.restart(member).await?;
                    }
                    Fault::MemberPause => {
                        self.target.pause(member);
                        tokio::time::sleep(self.hold).await;
                        self.target.resume(member);
                    }
                    _ => {
                        let mode = if fault == Fault::IsolateSilent {
                            Mode::Drop
                        } else {
                            Mode::Reset
                        };
                        self.target.isolate(member, mode);
                        tokio::time::sleep(self.hold).await;
                        self.target.heal();
                    }
                }
                self.heal_event(format!("{name} {who}"));
            }
            Fault::AgentKill | Fault::AgentPause => {
                let target = &self.target;
                let leader = self.leader_where(pick, |k| target.is_agent(k.member)).await;
                let member = leader
                    .and_then(|l| self.kid(&l))
                    .map(|i| self.kids[i].member)
                    .filter(|m| self.target.is_agent(*m))
                    .or_else(|| (0..self.target.members()).find(|m| self.target.is_agent(*m)))
                    .ok_or("no agent")?;
                let who = self.target.name(member);
                self.fault(format!("{name} {who}"), false);
                if fault == Fault::AgentKill {
                    self.target.kill(member);
                    tokio::time::sleep(self.hold).await;
                    self.target.restart(member).await?;
                } else {
                    self.target.pause(member);
                    tokio::time::sleep(self.hold).await;
                    self.target.resume(member);
                }
                self.heal_event(format!("{name} {who}"));
            }
            Fault::ClientCut => {
                let leader = self.leader_where(pick, |_| true).await;
                let member = leader
                    .and_then(|l| self.kid(&l))
                    .map(|i| self.kids[i].member)
                    .unwrap_or(0);
                let who = self.target.name(member);
                self.fault(format!("{name} {who}"), false);
                self.target.client_proxy(member).set(Mode::Drop);
                tokio::time::sleep(self.hold).await;
                self.target.heal();
                self.heal_event(format!("{name} {who}"));
            }
            Fault::RestartEmpty => {
                self.leader_where(pick, |_| true).await;
                self.fault(name.clone(), true);
                self.target.restart_empty().await?;
                self.heal_event(name);
            }
        }
        // Let it recover before the next fault: the cluster, a leader, and
        // the followers naming it (the checker judges the bounds).
        if let Err(e) = self.target.wait_healthy(Duration::from_secs(120)).await {
            self.run_errors.push(format!(
                "{} did not recover after {}: {e}",
                self.target.backend(),
                fault.name()
            ));
        }
        let limit = self.bound.saturating_add(Duration::from_secs(5));
        let start = Instant::now();
        let followers = self.followers();
        while start.elapsed() < limit {
            if let Some(leader) = self.log.leader() {
                if self.log.followers_name(&followers, &leader) {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

/// Runs one backend; `Ok(None)` if its servers are not installed.
pub async fn run_backend(backend: &str, settings: &Settings) -> Result<Option<Outcome>, BoxError> {
    let started = Instant::now();
    let dir = settings.dir.join(backend);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let Some(target) = target::start(backend, &dir).await? else {
        return Ok(None);
    };
    let backend = target.backend();
    let namespace = format!("nemesis-{}", std::process::id());
    // The lock TTL and slack the store states decide the bounds.
    let probe = anykv::open(&target.url(0, &namespace, target.query())).await?;
    let caps = probe.capabilities();
    let _ = probe.close().await;
    let ttl = caps.session_ttl;
    let bound = ttl
        .saturating_add(caps.session_slack)
        .saturating_add(Duration::from_secs(2));
    let mut run = Run {
        target,
        settings: Settings {
            dir: dir.clone(),
            ..settings.clone()
        },
        log: Log::default(),
        resource: FencedResource::start().await?,
        kids: Vec::new(),
        generation: 0,
        namespace,
        key: "leader",
        bound,
        hold: ttl.saturating_add(Duration::from_secs(1)),
        run_errors: Vec::new(),
        holding: false,
    };
    let candidates = run.target.candidate_members();
    for i in 0..3 {
        let member = candidates[i % candidates.len()];
        run.spawn(format!("c{i}"), member, true).await?;
    }
    let followers = run.target.follower_members();
    for i in 0..2 {
        let member = followers[i % followers.len()];
        run.spawn(format!("f{i}"), member, false).await?;
    }
    if run
        .leader_where(Duration::from_secs(60), |_| true)
        .await
        .is_none()
    {
        return Err(format!("{backend}: no leader within 60 s of the start").into());
    }

    let faults = run.target.faults();
    let mut schedule: Vec<Fault> = Vec::new();
    for _ in 0..settings.rounds.max(1) {
        schedule.extend(faults.iter().copied());
    }
    for (done, fault) in schedule.into_iter().enumerate() {
        tokio::time::sleep(settings.calm).await;
        if started.elapsed() > settings.time_limit && done >= faults.len() {
            break;
        }
        tracing::info!(backend, fault = fault.name(), "injecting");
        eprintln!(
            "[nemesis] {backend}: {} (handovers so far: {})",
            fault.name(),
            run.log.terms_started().saturating_sub(1)
        );
        if let Err(e) = run.inject(fault).await {
            run.run_errors
                .push(format!("{backend}: {}: {e}", fault.name()));
        }
    }
    // Calm handovers until the minimum is reached (bounded).
    let calm_until = Instant::now() + Duration::from_secs(600);
    while run.log.terms_started().saturating_sub(1) < settings.min_handovers
        && Instant::now() < calm_until
        && started.elapsed() < settings.time_limit.saturating_add(Duration::from_secs(600))
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Stop the children: their open terms end at their kill.
    for i in 0..run.kids.len() {
        run.kill_kid(i).await;
    }
    let mut events = run.log.snapshot();
    events.extend(run.resource.events());
    let history = History::new(events);
    let _ = std::fs::write(
        dir.join("history.jsonl"),
        history
            .events
            .iter()
            .map(Event::to_line)
            .collect::<Vec<_>>()
            .join("\n"),
    );
    let report = checker::check(&history, &Params::default());
    let rows = rows(&history, &report);
    Ok(Some(Outcome {
        backend,
        report,
        rows,
        took: started.elapsed(),
        run_errors: run.run_errors,
    }))
}

/// Splits the report by the fault in force (the latest one injected).
fn rows(history: &History, report: &Report) -> BTreeMap<String, FaultRow> {
    // (time, fault kind) of every injection.
    let mut windows: Vec<(u64, String)> = Vec::new();
    for e in &history.events {
        if let Event::Fault { name, t, .. } = e {
            windows.push((*t, kind_of(name)));
        }
    }
    let kind_at = |t: u64| -> String {
        windows
            .iter()
            .rev()
            .find(|(from, _)| *from <= t)
            .map(|(_, k)| k.clone())
            .unwrap_or_else(|| "none (resign only)".to_string())
    };
    let mut rows: BTreeMap<String, FaultRow> = BTreeMap::new();
    for (_, k) in &windows {
        rows.entry(k.clone()).or_default().runs += 1;
    }
    // (from, to, kind) of every fault while in force.
    let mut in_force: Vec<(u64, u64, String)> = Vec::new();
    let mut pending: Option<(u64, String)> = None;
    for e in &history.events {
        match e {
            Event::Fault { name, t, .. } => pending = Some((*t, kind_of(name))),
            Event::Heal { t, .. } => {
                if let Some((from, kind)) = pending.take() {
                    in_force.push((from, *t, kind));
                }
            }
            _ => {}
        }
    }
    for term in report.terms.iter().skip(1) {
        let row = rows.entry(kind_at(term.start)).or_default();
        row.handovers += 1;
        if in_force
            .iter()
            .any(|(f, u, _)| term.start >= *f && term.start <= *u)
        {
            row.forced += 1;
        }
    }
    for o in &report.overlaps {
        let row = rows.entry(kind_at(o.at)).or_default();
        row.overlaps += 1;
        row.largest_overlap = row.largest_overlap.max(o.length);
    }
    for o in &report.expected {
        let row = rows.entry(kind_at(o.at)).or_default();
        row.expected += 1;
        row.largest_overlap = row.largest_overlap.max(o.length);
    }
    for inv in &report.inversions {
        let at = report
            .terms
            .iter()
            .find(|t| (t.node.clone(), t.token) == inv.after)
            .map(|t| t.start)
            .unwrap_or(0);
        rows.entry(kind_at(at)).or_default().inversions += 1;
    }
    for r in &report.recoveries {
        let row = rows.entry(kind_of(&r.name)).or_default();
        row.largest_recovery = row.largest_recovery.max(r.leader_after.unwrap_or(u64::MAX));
        row.bound = r.bound;
    }
    rows
}

/// A fault's kind from its recorded name ("member SIGSTOP etcd1" → "member SIGSTOP").
fn kind_of(name: &str) -> String {
    for f in [
        Fault::LeaderKill,
        Fault::LeaderPause,
        Fault::CandidateKill,
        Fault::MemberKill,
        Fault::MemberPause,
        Fault::IsolateSilent,
        Fault::IsolateReset,
        Fault::ClientCut,
        Fault::AgentKill,
        Fault::AgentPause,
        Fault::RestartEmpty,
    ] {
        if name.starts_with(f.name()) {
            return f.name().to_string();
        }
    }
    name.to_string()
}
