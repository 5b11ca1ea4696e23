//! Leadership (anykv-leadership's Candidate and Follower) on this backend:
//! one leader, handover on resign, crash failover, followers, slow
//! consumers, stop and drop.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anykv::StoreExt;
use anykv::{Error, Store};
use anykv_leadership::{Candidate, ElectedStream, ErrorStream, Follower};
use futures::channel::mpsc;
use futures::StreamExt;

use crate::harness::{
    alive_tasks, assert_quiet, eventually, next_item, CaseResult, Ctx, Done, PATIENCE,
};

crate::cases::cases!("leadership":
    one_of_five_candidates_is_elected,
    terms_never_overlap_and_tokens_increase_over_100_handovers,
    resign_elects_another_candidate_within_a_second,
    follower_sees_every_term_in_order_and_ends_on_the_current_leader,
    follower_reports_a_vacancy_as_none,
    killed_leader_process_is_replaced_and_followed,
    unread_streams_delay_neither_renewal_nor_another_election,
    lost_lock_is_reported_and_the_campaign_goes_on,
    closed_store_ends_the_campaign_with_a_closed_error,
    stop_and_resign_twice_are_harmless_and_drop_leaves_no_task,
);

/// A resign hands over in about one store round trip; this bound is
/// generous for noisy machines, and far below any TTL or poll interval.
const HANDOVER_BOUND: Duration = Duration::from_secs(1);

const KEY: &str = "leader";

/// A candidate on its own handle (own session), with its streams.
struct Node {
    candidate: Arc<Candidate>,
    elected: ElectedStream,
    errors: ErrorStream,
}

/// `count` candidates `node-0`, `node-1`, … each on its own handle.
async fn start_nodes(cx: &Ctx, count: usize) -> Result<Vec<Node>, Error> {
    let mut nodes = Vec::new();
    for i in 0..count {
        nodes.push(start_node(cx, &format!("node-{i}")).await?);
    }
    Ok(nodes)
}

async fn start_node(cx: &Ctx, name: &str) -> Result<Node, Error> {
    let candidate = Arc::new(Candidate::new(cx.store().await, KEY, name));
    let (elected, errors) = candidate.run_for_election().await?;
    Ok(Node {
        candidate,
        elected,
        errors,
    })
}

fn leaders(candidates: &[Arc<Candidate>]) -> Vec<usize> {
    (0..candidates.len())
        .filter(|&i| candidates[i].is_leader())
        .collect()
}

/// Reads the next item of an elected stream, failing the case on silence.
async fn next_elected(node: &mut Node) -> bool {
    next_item(&mut node.elected, node.candidate.node_id()).await
}

/// A leadership change as one candidate's consumer saw it.
#[derive(Debug, Clone, Copy)]
struct Seen {
    node: usize,
    leader: bool,
    at: Instant,
}

/// What the recorders saw: closed terms per node and any overlap.
#[derive(Default)]
struct Record {
    /// (node, start, end) from the node's own elected stream.
    terms: Vec<(usize, Instant, Instant)>,
    violations: Vec<String>,
}

/// Reads one node's elected stream for the rest of the case. When it says
/// `true`, no other candidate may claim to lead: nothing ends this term
/// before the driver hears of it, so any other leader now overlaps it.
fn spawn_recorder(
    node: usize,
    mut elected: ElectedStream,
    all: Arc<Vec<Arc<Candidate>>>,
    record: Arc<Mutex<Record>>,
    events: mpsc::UnboundedSender<Seen>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut start = None;
        while let Some(leader) = elected.next().await {
            let at = Instant::now();
            let mut record = record.lock().unwrap_or_else(|p| p.into_inner());
            if leader {
                let others: Vec<usize> = leaders(&all).into_iter().filter(|&j| j != node).collect();
                if !others.is_empty() {
                    record.violations.push(format!(
                        "node-{node} was elected while {others:?} also claimed to lead"
                    ));
                }
                start = Some(at);
            } else if let Some(start) = start.take() {
                record.terms.push((node, start, at));
            }
            drop(record);
            let _ = events.unbounded_send(Seen { node, leader, at });
        }
    })
}

/// The next `true` any recorder reports, failing the case on silence.
async fn next_elected_event(events: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    loop {
        let seen = next_item(events, "a leader elected").await;
        if seen.leader {
            return seen;
        }
    }
}

async fn one_of_five_candidates_is_elected(cx: Ctx) -> CaseResult {
    let mut nodes = start_nodes(&cx, 5).await?;
    let candidates: Vec<_> = nodes.iter().map(|n| n.candidate.clone()).collect();
    for node in &mut nodes {
        assert!(!next_elected(node).await, "the first item must be false");
    }
    eventually(PATIENCE, "a leader elected", || async {
        !leaders(&candidates).is_empty()
    })
    .await;
    // Long enough for a second winner to show up if there were one.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let elected = leaders(&candidates);
    assert_eq!(elected.len(), 1, "leaders: {elected:?}");
    let leader = elected[0];
    assert!(next_elected(&mut nodes[leader]).await);
    for (i, node) in nodes.iter_mut().enumerate() {
        if i != leader {
            assert_quiet(&mut node.elected, Duration::from_millis(100), "a follower").await;
            assert_eq!(node.candidate.leader_token(), None);
        }
    }
    assert!(nodes[leader].candidate.leader_token().is_some());
    let reader = cx.store().await;
    assert_eq!(
        reader.get(KEY).await?.value,
        nodes[leader].candidate.node_id().as_bytes()
    );
    Ok(Done::Passed)
}

async fn terms_never_overlap_and_tokens_increase_over_100_handovers(cx: Ctx) -> CaseResult {
    const HANDOVERS: usize = 100;
    let nodes = start_nodes(&cx, 5).await?;
    let all: Arc<Vec<_>> = Arc::new(nodes.iter().map(|n| n.candidate.clone()).collect());
    let record = Arc::new(Mutex::new(Record::default()));
    let (events_tx, mut events) = mpsc::unbounded();
    let mut recorders = Vec::new();
    let mut error_streams = Vec::new();
    for (i, node) in nodes.into_iter().enumerate() {
        recorders.push(spawn_recorder(
            i,
            node.elected,
            all.clone(),
            record.clone(),
            events_tx.clone(),
        ));
        error_streams.push(node.errors);
    }
    drop(events_tx);

    let mut tokens = Vec::new();
    let mut current = next_elected_event(&mut events).await;
    for round in 0..HANDOVERS {
        // Nothing can end this term but the resign below, so this is a
        // stable view: exactly one leader, with a larger token than before.
        let elected = leaders(&all);
        assert_eq!(elected, vec![current.node], "round {round}: leaders");
        let token = all[current.node]
            .leader_token()
            .ok_or_else(|| format!("round {round}: the leader has no token"))?;
        tokens.push(token);
        let resigned = Instant::now();
        all[current.node].resign().await;
        let next = next_elected_event(&mut events).await;
        assert_ne!(
            next.node, current.node,
            "round {round}: the resigning leader was elected again"
        );
        let handover = next.at.saturating_duration_since(resigned);
        assert!(
            handover < HANDOVER_BOUND,
            "round {round}: handover took {handover:?}"
        );
        current = next;
    }
    for candidate in all.iter() {
        candidate.stop().await;
    }
    for recorder in recorders {
        tokio::time::timeout(PATIENCE, recorder).await??;
    }

    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "fencing tokens not strictly increasing: {tokens:?}"
    );
    let record = record.lock().unwrap_or_else(|p| p.into_inner());
    assert!(record.violations.is_empty(), "{:?}", record.violations);
    assert!(
        record.terms.len() > HANDOVERS,
        "only {} terms recorded",
        record.terms.len()
    );
    // Each consumer's clock reading comes a little after the fact, so allow
    // for scheduling jitter between two consumers; the check above is exact.
    let margin = Duration::from_millis(100);
    let mut terms = record.terms.clone();
    terms.sort_by_key(|&(_, start, _)| start);
    for pair in terms.windows(2) {
        let (a, _, a_end) = pair[0];
        let (b, b_start, _) = pair[1];
        assert!(
            b_start + margin >= a_end,
            "node-{b}'s term began {:?} before node-{a}'s ended",
            a_end.duration_since(b_start)
        );
    }
    drop(error_streams);
    Ok(Done::Passed)
}

async fn resign_elects_another_candidate_within_a_second(cx: Ctx) -> CaseResult {
    let mut nodes = vec![start_node(&cx, "node-0").await?];
    assert!(!next_elected(&mut nodes[0]).await);
    assert!(
        next_elected(&mut nodes[0]).await,
        "node-0 is alone at first"
    );
    nodes.push(start_node(&cx, "node-1").await?);
    assert!(!next_elected(&mut nodes[1]).await);
    for round in 0..4 {
        let (leader, other) = if round % 2 == 0 { (0, 1) } else { (1, 0) };
        let resigned = Instant::now();
        nodes[leader].candidate.resign().await;
        assert!(!nodes[leader].candidate.is_leader());
        assert!(!next_elected(&mut nodes[leader]).await);
        assert!(next_elected(&mut nodes[other]).await);
        let handover = resigned.elapsed();
        assert!(
            handover < HANDOVER_BOUND,
            "round {round}: handover took {handover:?}"
        );
        // The resigned candidate campaigns again, behind the new leader.
        assert_quiet(
            &mut nodes[leader].elected,
            Duration::from_millis(200),
            "the resigned candidate",
        )
        .await;
    }
    Ok(Done::Passed)
}

async fn follower_sees_every_term_in_order_and_ends_on_the_current_leader(cx: Ctx) -> CaseResult {
    const TERMS: usize = 8;
    let watcher = cx.store().await;
    let (mut leaders_seen, _follower_errors) =
        Follower::new(watcher, KEY).follow_election().await?;
    assert_eq!(next_item(&mut leaders_seen, "no leader yet").await, None);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let collector = {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Some(leader) = leaders_seen.next().await {
                seen.lock().unwrap_or_else(|p| p.into_inner()).push(leader);
            }
        })
    };

    let mut nodes = start_nodes(&cx, 3).await?;
    let mut expected = Vec::new();
    for node in &mut nodes {
        assert!(!next_elected(node).await);
    }
    let candidates: Vec<_> = nodes.iter().map(|n| n.candidate.clone()).collect();
    for round in 0..TERMS {
        eventually(PATIENCE, "a leader", || async {
            leaders(&candidates).len() == 1
        })
        .await;
        let leader = leaders(&candidates)[0];
        expected.push(candidates[leader].node_id().to_owned());
        // Far longer than a watch round trip.
        tokio::time::sleep(Duration::from_millis(300)).await;
        if round + 1 < TERMS {
            candidates[leader].resign().await;
        }
    }
    let current = expected.last().cloned();
    eventually(
        PATIENCE,
        "the follower shows the current leader",
        || async { seen.lock().unwrap_or_else(|p| p.into_inner()).last() == Some(&current) },
    )
    .await;
    collector.abort();

    let shown: Vec<String> = seen
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .flatten()
        .cloned()
        .collect();
    let mut shown_terms = shown.clone();
    shown_terms.dedup();
    let mut expected_terms = expected.clone();
    expected_terms.dedup();
    assert_eq!(
        shown_terms, expected_terms,
        "the follower's leaders differ from the terms"
    );
    Ok(Done::Passed)
}

async fn follower_reports_a_vacancy_as_none(cx: Ctx) -> CaseResult {
    let watcher = cx.store().await;
    let (mut leaders_seen, _errors) = Follower::new(watcher, KEY).follow_election().await?;
    assert_eq!(next_item(&mut leaders_seen, "initial").await, None);
    let mut nodes = start_nodes(&cx, 1).await?;
    assert!(!next_elected(&mut nodes[0]).await);
    assert!(next_elected(&mut nodes[0]).await);
    assert_eq!(
        next_item(&mut leaders_seen, "elected").await,
        Some("node-0".to_owned())
    );
    nodes[0].candidate.stop().await;
    assert_eq!(next_item(&mut leaders_seen, "stopped").await, None);
    Ok(Done::Passed)
}

async fn killed_leader_process_is_replaced_and_followed(cx: Ctx) -> CaseResult {
    let observer = cx.store().await;
    let caps = observer.capabilities();
    if !caps.shared_between_processes {
        return Ok(Done::NotApplicable(format!(
            "{} stores live in one process: no other process can lead",
            caps.backend
        )));
    }
    let (mut leaders_seen, _errors) = Follower::new(observer.clone(), KEY)
        .follow_election()
        .await?;
    assert_eq!(next_item(&mut leaders_seen, "initial").await, None);
    let mut child = cx.spawn_candidate_child();
    assert_eq!(
        next_item(&mut leaders_seen, "child elected").await,
        Some("child".to_owned())
    );
    let mut nodes = start_nodes(&cx, 2).await?;
    for node in &mut nodes {
        assert!(!next_elected(node).await);
    }

    child.kill();
    let killed = Instant::now();
    let bound = caps.session_ttl + caps.session_slack + Duration::from_secs(2);
    let candidates: Vec<_> = nodes.iter().map(|n| n.candidate.clone()).collect();
    eventually(
        bound,
        "a new leader after the leader was killed",
        || async { leaders(&candidates).len() == 1 },
    )
    .await;
    let leader = candidates[leaders(&candidates)[0]].node_id().to_owned();
    let deadline = killed + bound + PATIENCE;
    loop {
        let shown = tokio::time::timeout_at(deadline.into(), leaders_seen.next())
            .await
            .map_err(|_| "the follower did not show the new leader")?;
        match shown {
            Some(Some(name)) if name == leader => break,
            Some(Some(name)) if name == "child" => {
                return Err("the follower showed the dead leader again".into())
            }
            Some(_) => {}
            None => return Err("the follower's stream ended".into()),
        }
    }
    Ok(Done::Passed)
}

async fn unread_streams_delay_neither_renewal_nor_another_election(cx: Ctx) -> CaseResult {
    let lazy = start_node(&cx, "lazy").await?;
    eventually(PATIENCE, "the lazy candidate elected", || async {
        lazy.candidate.is_leader()
    })
    .await;
    let mut eager = start_node(&cx, "eager").await?;
    assert!(!next_elected(&mut eager).await);

    // Nobody reads the leader's streams for 10 s: longer than any session
    // TTL the suite uses, so only renewal (the store's job) keeps it leading.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(
        lazy.candidate.is_leader(),
        "the unread leader lost its term"
    );
    let reader = cx.store().await;
    assert_eq!(reader.get(KEY).await?.value, "lazy");
    assert!(eager.candidate.leader_token().is_none());

    let resigned = Instant::now();
    lazy.candidate.resign().await;
    assert!(next_elected(&mut eager).await);
    let handover = resigned.elapsed();
    assert!(
        handover < HANDOVER_BOUND,
        "handover from an unread leader took {handover:?}"
    );

    // Read at last, the stream tells the shortened but safe story: the
    // term that came and went unread is skipped, never reported as `true`
    // now that it is over.
    let mut elected = lazy.elected;
    assert!(!next_item(&mut elected, "lazy").await);
    assert_quiet(&mut elected, Duration::from_millis(200), "lazy").await;
    drop(lazy.errors);
    Ok(Done::Passed)
}

async fn lost_lock_is_reported_and_the_campaign_goes_on(cx: Ctx) -> CaseResult {
    let mut nodes = start_nodes(&cx, 1).await?;
    let node = &mut nodes[0];
    assert!(!next_elected(node).await);
    assert!(next_elected(node).await);
    let first = node.candidate.leader_token().ok_or("no token")?;
    let intruder = cx.store().await;
    intruder.delete(KEY).await?;
    assert!(!next_elected(node).await, "a deleted lock ends the term");
    match next_item(&mut node.errors, "the loss").await {
        Error::LockLost { key } => assert_eq!(key, KEY),
        other => return Err(format!("expected LockLost, got {other:?}").into()),
    }
    assert!(next_elected(node).await, "the candidate campaigns again");
    let second = node.candidate.leader_token().ok_or("no token")?;
    assert!(second > first, "{second} after {first}");
    Ok(Done::Passed)
}

async fn closed_store_ends_the_campaign_with_a_closed_error(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    let candidate = Candidate::new(store.clone(), KEY, "node-0");
    let (mut elected, errors) = candidate.run_for_election().await?;
    assert!(!next_item(&mut elected, "initial").await);
    assert!(next_item(&mut elected, "elected").await);
    store.close().await?;
    assert!(!next_item(&mut elected, "closed").await);
    assert!(tokio::time::timeout(PATIENCE, elected.next())
        .await?
        .is_none());
    let errors: Vec<Error> = tokio::time::timeout(PATIENCE, errors.collect()).await?;
    assert!(
        matches!(errors.last(), Some(Error::Closed { .. })),
        "errors: {errors:?}"
    );
    assert!(!candidate.is_leader());
    Ok(Done::Passed)
}

async fn stop_and_resign_twice_are_harmless_and_drop_leaves_no_task(cx: Ctx) -> CaseResult {
    let store: Arc<dyn Store> = cx.store().await;
    // The first round starts whatever a handle keeps running once used that
    // way (a session and its renewal, pooled connections); the second must
    // then leave no task behind.
    stop_resign_and_drop(&store).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = alive_tasks();
    stop_resign_and_drop(&store).await?;
    eventually(Duration::from_secs(5), "candidate tasks ended", || async {
        alive_tasks() <= before
    })
    .await;
    Ok(Done::Passed)
}

async fn stop_resign_and_drop(
    store: &Arc<dyn Store>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let candidate = Candidate::new(store.clone(), KEY, "node-0");
    let (mut elected, errors) = candidate.run_for_election().await?;
    assert!(!next_item(&mut elected, "initial").await);
    assert!(next_item(&mut elected, "elected").await);
    tokio::join!(candidate.resign(), candidate.resign());
    candidate.resign().await;
    assert!(!next_item(&mut elected, "resigned").await);
    candidate.stop().await;
    candidate.stop().await;
    tokio::join!(candidate.stop(), candidate.resign());
    assert!(!candidate.is_leader());
    let rest: Vec<bool> = tokio::time::timeout(PATIENCE, elected.collect()).await?;
    assert!(
        rest.last() != Some(&true),
        "a stopped candidate's stream ends on false: {rest:?}"
    );
    let errors: Vec<Error> = tokio::time::timeout(PATIENCE, errors.collect()).await?;
    assert!(errors.is_empty(), "errors: {errors:?}");
    drop(candidate);

    // Dropped while leading, without stop: it steps down and its task ends.
    let dropped = Candidate::new(store.clone(), KEY, "node-1");
    let (mut elected, _errors) = dropped.run_for_election().await?;
    assert!(!next_item(&mut elected, "initial").await);
    assert!(next_item(&mut elected, "elected").await);
    drop(dropped);
    assert!(!next_item(&mut elected, "dropped").await);
    assert!(tokio::time::timeout(PATIENCE, elected.next())
        .await?
        .is_none());

    // The leadership is free again at once.
    let next = Candidate::new(store.clone(), KEY, "node-2");
    let (mut elected, _errors) = next.run_for_election().await?;
    assert!(!next_item(&mut elected, "initial").await);
    assert!(next_item(&mut elected, "elected after a drop").await);
    next.stop().await;
    Ok(())
}
