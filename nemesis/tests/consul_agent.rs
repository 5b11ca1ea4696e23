//! A lock holder talks to Consul through a client agent; that agent fails.
//! Whatever Consul then does with the holder's session, the holder must
//! hear `lost()` before a waiter on another member acquires the lock.
//!
//! One cluster (3 servers, 2 client agents) serves three faults of client
//! agent 1, in turn: SIGKILL, SIGSTOP for longer than the session TTL, and
//! a restart. Times are taken on one monotonic clock (this process).

#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use anykv::LockOptions;
use anykv_nemesis::cluster::consul::{ConsulBinaries, ConsulCluster};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Member index of client agent 1 (after the three servers).
const AGENT1: usize = 3;
/// Consul's minimum session TTL.
const SESSION_TTL: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy)]
enum Fault {
    Kill,
    /// SIGSTOP for longer than the session TTL, then SIGCONT.
    Pause,
    /// SIGKILL and start again at once (same data, same ports).
    Restart,
}

/// When, after the fault began, the holder heard `lost()` and the waiter got
/// the lock (`None`: not within the case's window).
#[derive(Debug)]
struct Outcome {
    fault: Fault,
    lost: Option<Duration>,
    acquired: Option<Duration>,
}

impl Outcome {
    fn two_holders(&self) -> bool {
        match (self.lost, self.acquired) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(lost), Some(acquired)) => lost > acquired,
        }
    }

    fn describe(&self) -> String {
        let gap = match (self.lost, self.acquired) {
            (Some(lost), Some(acquired)) if acquired >= lost => {
                format!(
                    "lost() came {:?} before the waiter acquired",
                    acquired - lost
                )
            }
            (Some(lost), Some(acquired)) => format!(
                "TWO HOLDERS for {:?}: the waiter acquired before lost() fired",
                lost - acquired
            ),
            (None, Some(_)) => "TWO HOLDERS: the waiter acquired, lost() never fired".into(),
            (_, None) => "the waiter did not acquire".into(),
        };
        format!(
            "{:?}: lost() after {:?}, waiter acquired after {:?}: {gap}",
            self.fault, self.lost, self.acquired
        )
    }
}

async fn run_case(cluster: &mut ConsulCluster, fault: Fault) -> Result<Outcome, BoxError> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    let ns = format!("agent-fault/{fault:?}-{nanos:x}");
    let query = format!("session_ttl={}s", SESSION_TTL.as_secs());
    let holder = anykv::open(&cluster.url(AGENT1, &ns, &query)).await?;
    let waiter = anykv::open(&cluster.url(0, &ns, &query)).await?;
    let guard = holder
        .new_lock("l", LockOptions::new("holder"))
        .await?
        .lock()
        .await?;
    let lost = guard.lost();
    let lost_at = tokio::spawn(async move {
        lost.await;
        Instant::now()
    });
    let wait_lock = waiter.new_lock("l", LockOptions::new("waiter")).await?;
    let acquired_at = tokio::spawn(async move {
        let guard = wait_lock.lock().await;
        (Instant::now(), guard)
    });
    // Let the waiter's blocking query start.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let began = Instant::now();
    match fault {
        Fault::Kill => cluster.kill(AGENT1),
        Fault::Pause => {
            cluster.pause(AGENT1);
            tokio::time::sleep(SESSION_TTL + Duration::from_secs(4)).await;
            cluster.resume(AGENT1);
        }
        Fault::Restart => cluster.restart(AGENT1).await?,
    }
    // Consul frees an expired session's keys within 2 x TTL of its last
    // renewal; leave room for that, and stay within a minute per case.
    let window = Duration::from_secs(35);
    let deadline = began.checked_add(window).ok_or("deadline out of range")?;
    let (lost_at, acquired_at) = tokio::join!(
        tokio::time::timeout_at(deadline.into(), lost_at),
        tokio::time::timeout_at(deadline.into(), acquired_at),
    );
    let lost = lost_at.ok().transpose()?.map(|at| at.duration_since(began));
    let acquired = match acquired_at.ok().transpose()? {
        Some((at, guard)) => {
            let guard = guard?;
            let _ = guard.unlock().await;
            Some(at.duration_since(began))
        }
        None => None,
    };
    drop(guard);
    let _ = holder.close().await;
    let _ = waiter.close().await;
    Ok(Outcome {
        fault,
        lost,
        acquired,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_behind_a_failing_agent_hears_lost_before_a_waiter_acquires(
) -> Result<(), BoxError> {
    let Some(bin) = ConsulBinaries::from_env() else {
        let reason = "ANYKV_TEST_CONSUL_BIN is not set: export scripts/services.sh env";
        if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
            return Err(format!("{reason} (required under CI)").into());
        }
        println!("skipped: {reason}");
        return Ok(());
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    let dir = std::env::temp_dir().join(format!("anykv-consul-cluster-{nanos:x}"));
    println!("cluster directory (logs): {}", dir.display());
    let mut cluster = ConsulCluster::start(&dir, &bin).await?;
    assert_eq!(cluster.members(), 5);
    assert_eq!(cluster.name(AGENT1), "consul-agent1");

    let mut outcomes = Vec::new();
    for fault in [Fault::Kill, Fault::Pause, Fault::Restart] {
        let outcome = run_case(&mut cluster, fault).await?;
        println!("{}", outcome.describe());
        outcomes.push(outcome);
        if cluster.pid(AGENT1).is_none() {
            cluster.restart(AGENT1).await?;
        }
        cluster.wait_healthy(Duration::from_secs(30)).await?;
    }
    let bad: Vec<String> = outcomes
        .iter()
        .filter(|o| o.two_holders())
        .map(Outcome::describe)
        .collect();
    assert!(bad.is_empty(), "{}", bad.join("\n"));
    // A killed or long-paused holder's lock is freed within its bound.
    for outcome in &outcomes {
        if let Fault::Kill | Fault::Pause = outcome.fault {
            assert!(
                outcome.acquired.is_some(),
                "{}: the lock was never freed",
                outcome.describe()
            );
        }
    }
    Ok(())
}
