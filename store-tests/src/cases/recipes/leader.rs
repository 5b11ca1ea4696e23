//! Leader-only jobs (anykv-recipes' `LeaderJob`) on this backend: one job
//! at a time across handovers, increasing tokens, a readable and
//! subscribable status, cancellation on a lost lock.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anykv::Error;
use anykv_leadership::{Candidate, ErrorStream};
use anykv_recipes::leader::LeaderJob;

use crate::harness::{eventually, CaseResult, Ctx, Done, PATIENCE};

crate::cases::cases!("recipes":
    leader_job_runs_on_one_node_at_a_time_with_increasing_tokens_over_6_handovers,
    leader_status_is_readable_and_subscribable_through_each_term,
    leader_job_is_cancelled_when_its_lock_is_lost_and_runs_again_next_term,
);

const KEY: &str = "leader-job/leader";

/// One run of a job, as the job itself saw it.
#[derive(Clone, Debug)]
struct Run {
    node: String,
    token: u64,
    start: Instant,
    /// When the job saw its cancellation.
    end: Option<Instant>,
}

type Log = Arc<Mutex<Vec<Run>>>;

fn lock(log: &Log) -> std::sync::MutexGuard<'_, Vec<Run>> {
    log.lock().unwrap_or_else(|p| p.into_inner())
}

/// A job on its own handle that logs its runs: start, then the moment it
/// sees its term cancelled.
async fn start_job(cx: &Ctx, node: &str, log: &Log) -> Result<(LeaderJob, ErrorStream), Error> {
    let candidate = Candidate::new(cx.store().await, KEY, node);
    let log = log.clone();
    let name = node.to_owned();
    LeaderJob::start(candidate, move |term| {
        let log = log.clone();
        let node = name.clone();
        async move {
            let index = {
                let mut log = lock(&log);
                log.push(Run {
                    node,
                    token: term.token(),
                    start: Instant::now(),
                    end: None,
                });
                log.len() - 1
            };
            term.cancelled().await;
            lock(&log)[index].end = Some(Instant::now());
        }
    })
    .await
}

async fn leader_job_runs_on_one_node_at_a_time_with_increasing_tokens_over_6_handovers(
    cx: Ctx,
) -> CaseResult {
    const HANDOVERS: usize = 6;
    let log = Log::default();
    let mut jobs = Vec::new();
    let mut error_streams = Vec::new();
    for i in 0..3 {
        let (job, errors) = start_job(&cx, &format!("node-{i}"), &log).await?;
        jobs.push(job);
        error_streams.push(errors);
    }
    let mut spare = 3;
    for round in 0..HANDOVERS {
        eventually(PATIENCE, "a job running on the leader", || async {
            lock(&log).iter().filter(|r| r.end.is_none()).count() == 1
        })
        .await;
        let leaders: Vec<usize> = (0..jobs.len()).filter(|&i| jobs[i].is_leader()).collect();
        assert_eq!(leaders.len(), 1, "round {round}: leaders {leaders:?}");
        let leader = leaders[0];
        let running = lock(&log)
            .iter()
            .find(|r| r.end.is_none())
            .cloned()
            .ok_or("no running job")?;
        assert_eq!(
            running.node,
            jobs[leader].candidate().node_id(),
            "round {round}: the job runs on the leader"
        );
        assert_eq!(Some(running.token), jobs[leader].token());
        if round % 3 == 2 {
            // Stop the leader and bring in a fresh node.
            let job = jobs.remove(leader);
            job.stop().await;
            assert!(!job.is_leader());
            let (job, errors) = start_job(&cx, &format!("node-{spare}"), &log).await?;
            jobs.push(job);
            error_streams.push(errors);
            spare += 1;
        } else {
            jobs[leader].resign().await;
        }
        // The job was awaited before the lock was released.
        assert!(
            lock(&log)
                .iter()
                .find(|r| r.token == running.token)
                .is_some_and(|r| r.end.is_some()),
            "round {round}: the job still ran after its node stepped down"
        );
    }
    eventually(PATIENCE, "the last job running", || async {
        lock(&log).iter().filter(|r| r.end.is_none()).count() == 1
    })
    .await;
    for job in &jobs {
        job.stop().await;
    }
    drop(error_streams);
    let runs = lock(&log).clone();
    assert!(runs.len() > HANDOVERS, "only {} runs", runs.len());
    for pair in runs.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        let a_end = a.end.ok_or("a job was never cancelled")?;
        assert!(
            b.start >= a_end,
            "{}'s job started {:?} before {}'s job saw its cancellation",
            b.node,
            a_end.duration_since(b.start),
            a.node
        );
        assert!(b.token > a.token, "tokens not increasing: {runs:?}");
        assert_ne!(a.node, b.node, "a handover kept the same node: {runs:?}");
    }
    assert!(
        runs.iter().all(|r| r.end.is_some()),
        "stop left a job running"
    );
    Ok(Done::Passed)
}

async fn leader_status_is_readable_and_subscribable_through_each_term(cx: Ctx) -> CaseResult {
    let log = Log::default();
    let (job, _errors) = start_job(&cx, "node-0", &log).await?;
    let mut status = job.status();
    let first = tokio::time::timeout(PATIENCE, status.wait_for(|s| s.is_leader()))
        .await
        .map_err(|_| "not elected")??
        .clone();
    assert_eq!(first.terms(), 1);
    let token = first.token().ok_or("a leader has a token")?;
    assert_eq!(job.token(), Some(token));
    assert_eq!(job.candidate().leader_token(), Some(token));
    // A second subscriber sees the same, and follows the next term.
    let mut other = job.status();
    assert!(other.borrow_and_update().is_leader());
    job.resign().await;
    assert!(!job.is_leader(), "resign returned while still leading");
    assert!(!status.borrow().is_leader());
    // Alone, the node leads again after the resign grace.
    let second = tokio::time::timeout(
        PATIENCE,
        other.wait_for(|s| s.terms() == 2 && s.is_leader()),
    )
    .await
    .map_err(|_| "not elected again")??
    .clone();
    assert!(second.token() > Some(token), "{second:?} after {token}");
    eventually(PATIENCE, "the job started for the second term", || async {
        lock(&log).len() == 2
    })
    .await;
    job.stop().await;
    assert!(!status.borrow().is_leader());
    assert_eq!(status.borrow().token(), None);
    // Once stopped, subscribers are told there will be no more changes.
    let ended =
        tokio::time::timeout(PATIENCE, async { while status.changed().await.is_ok() {} }).await;
    assert!(ended.is_ok(), "the status channel did not close after stop");
    Ok(Done::Passed)
}

async fn leader_job_is_cancelled_when_its_lock_is_lost_and_runs_again_next_term(
    cx: Ctx,
) -> CaseResult {
    let log = Log::default();
    let candidate_store = cx.store().await;
    let candidate = Candidate::new(candidate_store.clone(), KEY, "node-0");
    let seen = log.clone();
    let (job, _errors) = LeaderJob::start(candidate, move |term| {
        let log = seen.clone();
        async move {
            let index = {
                let mut log = lock(&log);
                log.push(Run {
                    node: "node-0".into(),
                    token: term.token(),
                    start: Instant::now(),
                    end: None,
                });
                log.len() - 1
            };
            term.cancelled().await;
            lock(&log)[index].end = Some(Instant::now());
        }
    })
    .await?;
    let mut status = job.status();
    tokio::time::timeout(PATIENCE, status.wait_for(|s| s.is_leader()))
        .await
        .map_err(|_| "not elected")??;
    let first = job.token().ok_or("no token")?;
    match candidate_store.session().expire().await {
        Ok(()) => {}
        Err(Error::Unsupported { .. }) => {
            job.stop().await;
            return Ok(Done::NotApplicable(
                "the backend cannot end a session on purpose".into(),
            ));
        }
        Err(error) => return Err(error.into()),
    }
    eventually(PATIENCE, "the job saw its lock lost", || async {
        lock(&log).first().is_some_and(|r| r.end.is_some())
    })
    .await;
    // The candidate campaigns again on the handle's new session.
    eventually(PATIENCE, "a second term", || async {
        lock(&log).len() == 2 && job.is_leader()
    })
    .await;
    assert!(job.token() > Some(first));
    job.stop().await;
    assert!(lock(&log).iter().all(|r| r.end.is_some()));
    // Long enough for a stray restart to show.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(lock(&log).len(), 2);
    Ok(Done::Passed)
}
