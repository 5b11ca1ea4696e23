//! The leader-only scheduler (anykv-recipes' `LeaderCron`) on this backend:
//! every firing once across handovers, and a firing claimed by a leader that
//! died mid-job is not run again (at most once).

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anykv::{Error, Store};
use anykv_leadership::{Candidate, ErrorStream};
use anykv_recipes::cron::{LeaderCron, Schedule};

use crate::harness::{eventually, CaseResult, Ctx, Done, PATIENCE};

crate::cases::cases!("recipes":
    cron_30_firings_with_5_handovers_each_run_exactly_once,
    cron_a_firing_whose_leader_dies_mid_job_is_not_run_again,
);

const LEADER_KEY: &str = "cron/leader";
const STATE_KEY: &str = "cron/last";
const INTERVAL: Duration = Duration::from_millis(150);

/// (fire time in ms since the epoch, node, fencing token)
type Log = Arc<Mutex<Vec<(u64, String, u64)>>>;

fn lock(log: &Log) -> std::sync::MutexGuard<'_, Vec<(u64, String, u64)>> {
    log.lock().unwrap_or_else(|p| p.into_inner())
}

fn millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

async fn start_node(
    store: Arc<dyn Store>,
    node: &str,
    log: &Log,
) -> Result<(LeaderCron, ErrorStream), Error> {
    let candidate = Candidate::new(store.clone(), LEADER_KEY, node);
    let log = log.clone();
    let name = node.to_owned();
    let every = Schedule::every(INTERVAL)?;
    LeaderCron::start(candidate, store, STATE_KEY, every, move |firing| {
        lock(&log).push((millis(firing.fire_time()), name.clone(), firing.token()));
        async {}
    })
    .await
}

async fn cron_30_firings_with_5_handovers_each_run_exactly_once(cx: Ctx) -> CaseResult {
    const HANDOVERS: usize = 5;
    const FIRINGS: usize = 30;
    let log = Log::default();
    let mut nodes = Vec::new();
    let mut error_streams = Vec::new();
    for i in 0..3 {
        let (node, errors) = start_node(cx.store().await, &format!("node-{i}"), &log).await?;
        nodes.push(node);
        error_streams.push(errors);
    }
    let mut spare = 3;
    for round in 0..HANDOVERS {
        let due = (round + 1) * FIRINGS / (HANDOVERS + 1);
        eventually(PATIENCE, "firings before a handover", || async {
            lock(&log).len() >= due
        })
        .await;
        let leaders: Vec<usize> = (0..nodes.len()).filter(|&i| nodes[i].is_leader()).collect();
        assert_eq!(leaders.len(), 1, "round {round}: leaders {leaders:?}");
        let leader = leaders[0];
        if round % 2 == 1 {
            let node = nodes.remove(leader);
            node.stop().await;
            let (node, errors) =
                start_node(cx.store().await, &format!("node-{spare}"), &log).await?;
            nodes.push(node);
            error_streams.push(errors);
            spare += 1;
        } else {
            nodes[leader].resign().await;
        }
    }
    eventually(PATIENCE, "all the firings", || async {
        lock(&log).len() >= FIRINGS
    })
    .await;
    for node in &nodes {
        node.stop().await;
    }
    drop(error_streams);
    let log = lock(&log).clone();
    let step = INTERVAL.as_millis() as u64;
    for pair in log.windows(2) {
        let ((a, a_node, a_token), (b, b_node, b_token)) = (&pair[0], &pair[1]);
        assert!(b != a, "fire time {a} ran twice ({a_node}, {b_node})");
        assert_eq!(
            b.checked_sub(*a),
            Some(step),
            "after {a} ({a_node}) came {b} ({b_node}): a gap or a repeat in {log:?}"
        );
        assert!(b_token >= a_token, "tokens went back: {log:?}");
    }
    let leaders = log.windows(2).filter(|p| p[0].1 != p[1].1).count();
    assert!(
        leaders >= HANDOVERS,
        "only {leaders} changes of the firing node: {log:?}"
    );
    Ok(Done::Passed)
}

async fn cron_a_firing_whose_leader_dies_mid_job_is_not_run_again(cx: Ctx) -> CaseResult {
    let log = Log::default();
    // The first leader, on a handle of its own: its job takes the first
    // firing and never finishes; then the handle goes away under it.
    let doomed_store = cx.store_uncached().await;
    let candidate = Candidate::new(doomed_store.clone(), LEADER_KEY, "doomed");
    let seen = log.clone();
    let (doomed, _doomed_errors) = LeaderCron::start(
        candidate,
        doomed_store.clone(),
        STATE_KEY,
        Schedule::every(INTERVAL)?,
        move |firing| {
            lock(&seen).push((millis(firing.fire_time()), "doomed".into(), firing.token()));
            async move { firing.term().cancelled().await }
        },
    )
    .await?;
    eventually(PATIENCE, "the first firing", || async {
        !lock(&log).is_empty()
    })
    .await;
    let (survivor, _errors) = start_node(cx.store().await, "survivor", &log).await?;
    // The crash: the handle's session ends, its lock goes with it.
    doomed_store.close().await?;
    eventually(PATIENCE, "the survivor's firings", || async {
        lock(&log).len() >= 4
    })
    .await;
    survivor.stop().await;
    doomed.stop().await;
    let log = lock(&log).clone();
    assert_eq!(log[0].1, "doomed");
    assert!(
        log[1..].iter().all(|(_, node, _)| node == "survivor"),
        "{log:?}"
    );
    let step = INTERVAL.as_millis() as u64;
    assert_eq!(
        log[1].0.checked_sub(log[0].0),
        Some(step),
        "the survivor re-ran the dead leader's firing or skipped one: {log:?}"
    );
    Ok(Done::Passed)
}
