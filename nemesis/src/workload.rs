//! The workload, run in child processes so that the driver can SIGKILL and
//! SIGSTOP them: candidates that lead for a short while, write to the
//! fenced resource while they lead and resign, and followers that report
//! who leads. Every event goes to stdout as one JSON line
//! ([`crate::history::Event`]).

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anykv::Store;
use anykv_leadership::{Candidate, Follower};
use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::history::{now, Event};

/// What a child does.
#[derive(Clone, Debug)]
pub enum Role {
    /// Campaign; lead for a random time in `hold` (ms), writing to the
    /// fenced resource at `resource` every `write_every`, then resign.
    Candidate {
        /// Shortest and longest term, in ms.
        hold: (u64, u64),
        /// The fenced resource's address.
        resource: std::net::SocketAddr,
        /// Between two writes.
        write_every: Duration,
    },
    /// Report every leader change.
    Follower,
}

/// Writes one event line to stdout (flushed: the driver reads it live).
pub fn emit(event: &Event) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", event.to_line());
    let _ = out.flush();
}

/// Runs a child until it is killed: `node` is its id, `url` its store.
///
/// A candidate reads commands on stdin: `hold` makes a leader keep its term
/// until it is lost (the driver sends it before a fault, so that the fault
/// meets a leader that still claims to lead); `go` goes back to resigning
/// after the term's time.
pub async fn run(url: &str, key: &str, node: &str, role: Role) -> Result<(), anykv::Error> {
    let lateness = tokio::spawn(probe_lateness(node.to_string()));
    let hold_on = Arc::new(AtomicBool::new(false));
    let h = hold_on.clone();
    tokio::spawn(async move {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            match line.trim() {
                "hold" => h.store(true, Ordering::SeqCst),
                "go" => h.store(false, Ordering::SeqCst),
                _ => {}
            }
        }
    });
    let store = loop {
        match anykv::open(url).await {
            Ok(store) => break store,
            Err(e) if e.is_transient() => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(e) => return Err(e),
        }
    };
    let result = match role {
        Role::Candidate {
            hold,
            resource,
            write_every,
        } => candidate(store, key, node, hold, resource, write_every, hold_on).await,
        Role::Follower => follower(store, key, node).await,
    };
    lateness.abort();
    result
}

/// Measures how late timers fire on this child's runtime; reports the
/// largest lateness so far every second. Samples of a second or more are
/// the child being stopped (SIGSTOP), not scheduling, and are left out.
async fn probe_lateness(node: String) {
    let tick = Duration::from_millis(5);
    let mut max = Duration::ZERO;
    let mut reported = Instant::now();
    loop {
        let t0 = Instant::now();
        tokio::time::sleep(tick).await;
        let late = t0.elapsed().saturating_sub(tick);
        if late < Duration::from_secs(1) {
            max = max.max(late);
        }
        if reported.elapsed() >= Duration::from_secs(1) {
            reported = Instant::now();
            emit(&Event::Lateness {
                node: node.clone(),
                max: u64::try_from(max.as_nanos()).unwrap_or(u64::MAX),
            });
        }
    }
}

/// A cheap random number in `lo..=hi` (no need for a crate: hold times).
fn pick(lo: u64, hi: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now());
    lo + h.finish() % (hi.saturating_sub(lo) + 1)
}

async fn candidate(
    store: Arc<dyn Store>,
    key: &str,
    node: &str,
    hold: (u64, u64),
    resource: std::net::SocketAddr,
    write_every: Duration,
    hold_on: Arc<AtomicBool>,
) -> Result<(), anykv::Error> {
    let candidate = Arc::new(Candidate::new(store, key, node));
    let (mut elected, mut errors) = candidate.run_for_election().await?;
    tokio::spawn(async move { while errors.next().await.is_some() {} });
    let mut current: Option<(u64, tokio::task::JoinHandle<()>)> = None;
    while let Some(leading) = elected.next().await {
        let t = now();
        if leading {
            let Some(token) = candidate.leader_token() else {
                // Lost between the grant and this read: a term of zero
                // length, nothing done in it.
                continue;
            };
            emit(&Event::TermStart {
                node: node.to_string(),
                token,
                t,
            });
            let c = candidate.clone();
            let writer_node = node.to_string();
            let hold_on = hold_on.clone();
            let term = tokio::spawn(async move {
                let until = Instant::now()
                    .checked_add(Duration::from_millis(pick(hold.0, hold.1)))
                    .unwrap_or_else(Instant::now);
                let mut conn = Resource::connect(resource).await;
                while c.leader_token() == Some(token)
                    && (hold_on.load(Ordering::SeqCst) || Instant::now() < until)
                {
                    if let Some(conn) = conn.as_mut() {
                        let _ = conn.write(&writer_node, token).await;
                    }
                    tokio::time::sleep(write_every).await;
                }
                if c.leader_token() == Some(token) {
                    c.resign().await;
                }
            });
            current = Some((token, term));
        } else if let Some((token, term)) = current.take() {
            emit(&Event::TermEnd {
                node: node.to_string(),
                token,
                t,
            });
            // The term's task ends on its own once not leading; a resign
            // it is in the middle of finishes.
            drop(term);
        }
    }
    Ok(())
}

async fn follower(store: Arc<dyn Store>, key: &str, node: &str) -> Result<(), anykv::Error> {
    let follower = Follower::new(store, key);
    let (mut leaders, mut errors) = follower.follow_election().await?;
    tokio::spawn(async move { while errors.next().await.is_some() {} });
    while let Some(leader) = leaders.next().await {
        emit(&Event::Follow {
            follower: node.to_string(),
            leader,
            t: now(),
        });
    }
    Ok(())
}

/// A connection to the fenced resource.
pub struct Resource {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl Resource {
    /// Connects; `None` if the resource cannot be reached.
    pub async fn connect(addr: std::net::SocketAddr) -> Option<Resource> {
        let stream = TcpStream::connect(addr).await.ok()?;
        let _ = stream.set_nodelay(true);
        let (r, w) = stream.into_split();
        Some(Resource {
            reader: BufReader::new(r),
            writer: w,
        })
    }

    /// One fenced write; true if the resource accepted it.
    pub async fn write(&mut self, node: &str, token: u64) -> std::io::Result<bool> {
        self.writer
            .write_all(format!("W {node} {token} {}\n", now()).as_bytes())
            .await?;
        let mut line = String::new();
        self.reader.read_line(&mut line).await?;
        Ok(line.trim() == "1")
    }
}
