//! The checker: a pure function from a recorded [`History`] to a
//! [`Report`] of what went wrong.
//!
//! # Terms
//! A term is one (node, fencing token) from its `TermStart` to its
//! `TermEnd` — or to the `Killed` of its node, since a killed process
//! cannot act, or to the end of the history if it is still open. A node is
//! *acting* during its term except while it is paused (between `Paused` and
//! `Resumed`): a stopped process does nothing, and the time after its
//! resumption until it announces the end of its term counts as acting.
//!
//! # What is checked
//! * **Overlap**: two terms' acting times intersect by more than the
//!   scheduling epsilon. The epsilon is measured, not chosen: the largest
//!   timer lateness any child reported during the run (floored at 1 ms and
//!   capped at 100 ms, so that one long stall cannot hide every overlap),
//!   which is how late a process may learn of a deadline that has passed.
//!   Overlaps that begin while a fault marked `expected_limit` is in force
//!   (until its heal) are reported apart, as the documented limit, with
//!   their size.
//! * **Token order**: in order of term start, every term's token is
//!   strictly greater than the previous term's.
//! * **Fencing**: the resource accepted a write whose token is lower than a
//!   token it accepted before (a stale token), or a write from a node
//!   outside that node's term with that token (beyond the epsilon).
//! * **Recovery**: after every heal, a term is active within the heal's
//!   bound.
//! * **Convergence**: after every heal, within its bound plus
//!   [`Params::follower_slack`], there is a moment when every follower names
//!   a node that led within the last [`Params::follower_lag`].

use std::collections::{BTreeMap, BTreeSet};

use crate::history::{Event, History};

/// Tunables of the checker (not of what it checks).
#[derive(Clone, Debug)]
pub struct Params {
    /// Least scheduling epsilon (ns), whatever the children measured.
    pub min_epsilon: u64,
    /// Largest scheduling epsilon (ns): a longer stall measured in a child
    /// does not widen the tolerance beyond this.
    pub max_epsilon: u64,
    /// How long after a heal's bound followers may take to converge (ns).
    pub follower_slack: u64,
    /// How recent a leadership a follower may name and still count as
    /// converged (ns): followers learn of a new leader one notification late.
    pub follower_lag: u64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            min_epsilon: 1_000_000,
            max_epsilon: 100_000_000,
            follower_slack: 2_000_000_000,
            follower_lag: 250_000_000,
        }
    }
}

/// One leadership term.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Term {
    /// The leader's node id.
    pub node: String,
    /// Its fencing token.
    pub token: u64,
    /// When it learnt it leads.
    pub start: u64,
    /// When it stopped leading (announced, killed, or the end of history).
    pub end: u64,
    /// Its acting intervals: the term minus the node's pauses.
    pub acting: Vec<(u64, u64)>,
}

/// Two terms whose acting times intersect beyond the epsilon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Overlap {
    /// The earlier term (node, token).
    pub first: (String, u64),
    /// The later term (node, token).
    pub second: (String, u64),
    /// When the overlap began.
    pub at: u64,
    /// Its length in ns.
    pub length: u64,
}

/// A term whose token is not greater than its predecessor's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inversion {
    /// The earlier term (node, token).
    pub before: (String, u64),
    /// The later term (node, token).
    pub after: (String, u64),
}

/// A write the fenced resource should not have accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadWrite {
    /// Writer node.
    pub node: String,
    /// Token it carried.
    pub token: u64,
    /// When it was accepted.
    pub t: u64,
    /// Why it is wrong.
    pub why: &'static str,
}

/// What happened after one heal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovery {
    /// The healed fault.
    pub name: String,
    /// When it was healed.
    pub healed: u64,
    /// The bound (ns).
    pub bound: u64,
    /// How long until a term was active (ns); `None`: never.
    pub leader_after: Option<u64>,
    /// How long until every follower named a current leader (ns); `None`:
    /// never within the bound plus the follower slack.
    pub followers_after: Option<u64>,
}

impl Recovery {
    /// A leader within the bound, and followers converged.
    pub fn ok(&self) -> bool {
        self.leader_after.is_some_and(|d| d <= self.bound) && self.followers_after.is_some()
    }
}

/// The checker's verdict.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Every term, in start order.
    pub terms: Vec<Term>,
    /// The scheduling epsilon used (ns).
    pub epsilon: u64,
    /// Overlaps beyond the epsilon outside expected-limit faults.
    pub overlaps: Vec<Overlap>,
    /// Overlaps during faults marked as a documented limit.
    pub expected: Vec<Overlap>,
    /// Token inversions.
    pub inversions: Vec<Inversion>,
    /// Writes the resource accepted wrongly.
    pub bad_writes: Vec<BadWrite>,
    /// Writes accepted and refused.
    pub writes: (usize, usize),
    /// One entry per heal.
    pub recoveries: Vec<Recovery>,
    /// Events that make no sense (an end without a start, …).
    pub malformed: Vec<String>,
}

impl Report {
    /// Handovers: term changes (every term after the first).
    pub fn handovers(&self) -> usize {
        self.terms.len().saturating_sub(1)
    }

    /// The longest overlap, violation or expected (ns).
    pub fn largest_overlap(&self) -> u64 {
        self.overlaps
            .iter()
            .chain(&self.expected)
            .map(|o| o.length)
            .max()
            .unwrap_or(0)
    }

    /// The longest time to a leader after a heal (ns).
    pub fn largest_recovery(&self) -> u64 {
        self.recoveries
            .iter()
            .filter_map(|r| r.leader_after)
            .max()
            .unwrap_or(0)
    }

    /// True when nothing is wrong (expected-limit overlaps are not wrong).
    pub fn ok(&self) -> bool {
        self.overlaps.is_empty()
            && self.inversions.is_empty()
            && self.bad_writes.is_empty()
            && self.malformed.is_empty()
            && self.recoveries.iter().all(Recovery::ok)
    }

    /// Every problem, one line each (empty when [`Report::ok`]).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for o in &self.overlaps {
            out.push(format!(
                "overlap: {:?} and {:?} both acting for {:.3} ms",
                o.first,
                o.second,
                o.length as f64 / 1e6
            ));
        }
        for i in &self.inversions {
            out.push(format!(
                "token inversion: {:?} then {:?}",
                i.before, i.after
            ));
        }
        for w in &self.bad_writes {
            out.push(format!(
                "fenced resource accepted {} token {}: {}",
                w.node, w.token, w.why
            ));
        }
        for r in self.recoveries.iter().filter(|r| !r.ok()) {
            out.push(format!(
                "after heal of {}: leader after {:?} ns (bound {} ns), followers after {:?} ns",
                r.name, r.leader_after, r.bound, r.followers_after
            ));
        }
        out.extend(self.malformed.iter().cloned());
        out
    }
}

/// Judges a history.
pub fn check(history: &History, params: &Params) -> Report {
    let mut report = Report::default();
    let end_of_history = history.events.iter().map(Event::time).max().unwrap_or(0);

    // Pauses per node, and kill times per node.
    let mut pauses: BTreeMap<&str, Vec<(u64, u64)>> = BTreeMap::new();
    let mut paused_since: BTreeMap<&str, u64> = BTreeMap::new();
    let mut lateness = 0u64;
    for e in &history.events {
        match e {
            Event::Paused { node, t } => {
                paused_since.insert(node, *t);
            }
            Event::Resumed { node, t } => match paused_since.remove(node.as_str()) {
                Some(from) => pauses.entry(node).or_default().push((from, *t)),
                None => report
                    .malformed
                    .push(format!("{node} resumed at {t} without a pause")),
            },
            Event::Lateness { max, .. } => lateness = lateness.max(*max),
            _ => {}
        }
    }
    for (node, from) in paused_since {
        pauses.entry(node).or_default().push((from, end_of_history));
    }
    report.epsilon = lateness.clamp(
        params.min_epsilon,
        params.max_epsilon.max(params.min_epsilon),
    );
    let epsilon = report.epsilon;

    // Terms.
    let mut open: BTreeMap<(String, u64), u64> = BTreeMap::new();
    let mut closed: Vec<(String, u64, u64, u64)> = Vec::new();
    for e in &history.events {
        match e {
            Event::TermStart { node, token, t }
                if open.insert((node.clone(), *token), *t).is_some() =>
            {
                report
                    .malformed
                    .push(format!("{node} started term {token} twice"));
            }
            Event::TermEnd { node, token, t } => match open.remove(&(node.clone(), *token)) {
                Some(start) => closed.push((node.clone(), *token, start, *t)),
                None => report
                    .malformed
                    .push(format!("{node} ended term {token} it never started")),
            },
            Event::Killed { node, t } => {
                let ended: Vec<(String, u64)> =
                    open.keys().filter(|(n, _)| n == node).cloned().collect();
                for key in ended {
                    if let Some(start) = open.remove(&key) {
                        closed.push((key.0, key.1, start, *t));
                    }
                }
            }
            _ => {}
        }
    }
    for ((node, token), start) in open {
        closed.push((node, token, start, end_of_history));
    }
    closed.sort_by_key(|(_, _, start, _)| *start);
    report.terms = closed
        .into_iter()
        .map(|(node, token, start, end)| {
            let acting = subtract(
                (start, end),
                pauses.get(node.as_str()).map(Vec::as_slice).unwrap_or(&[]),
            );
            Term {
                node,
                token,
                start,
                end,
                acting,
            }
        })
        .collect();

    // Expected-limit windows: from such a fault to the next heal.
    let mut limit_windows: Vec<(u64, u64)> = Vec::new();
    let mut limit_open: Option<u64> = None;
    for e in &history.events {
        match e {
            Event::Fault {
                t,
                expected_limit: true,
                ..
            } => {
                limit_open.get_or_insert(*t);
            }
            Event::Heal { t, bound, .. } => {
                if let Some(from) = limit_open.take() {
                    // The consequences of the fault last until the system
                    // has recovered from it.
                    limit_windows.push((from, t.saturating_add(*bound)));
                }
            }
            _ => {}
        }
    }
    if let Some(from) = limit_open {
        limit_windows.push((from, end_of_history));
    }

    // Overlaps.
    let terms = &report.terms;
    for (i, a) in terms.iter().enumerate() {
        for b in &terms[i + 1..] {
            if b.start >= a.end {
                continue;
            }
            let (at, length) = intersection(&a.acting, &b.acting);
            if length <= epsilon {
                continue;
            }
            let overlap = Overlap {
                first: (a.node.clone(), a.token),
                second: (b.node.clone(), b.token),
                at,
                length,
            };
            if limit_windows.iter().any(|(f, u)| at >= *f && at <= *u) {
                report.expected.push(overlap);
            } else {
                report.overlaps.push(overlap);
            }
        }
    }

    // Token order.
    for pair in terms.windows(2) {
        if pair[1].token <= pair[0].token {
            report.inversions.push(Inversion {
                before: (pair[0].node.clone(), pair[0].token),
                after: (pair[1].node.clone(), pair[1].token),
            });
        }
    }

    // Fencing.
    let mut highest: Option<u64> = None;
    for e in &history.events {
        let Event::Write {
            node,
            token,
            t,
            accepted,
            sent,
        } = e
        else {
            continue;
        };
        if !*accepted {
            report.writes.1 += 1;
            continue;
        }
        report.writes.0 += 1;
        if highest.is_some_and(|h| *token < h) {
            report.bad_writes.push(BadWrite {
                node: node.clone(),
                token: *token,
                t: *t,
                why: "older than a token accepted before",
            });
        }
        highest = Some(highest.map_or(*token, |h| h.max(*token)));
        // When the writer decided to write (its send time), else when the
        // resource decided.
        let wrote = if *sent > 0 { *sent } else { *t };
        let in_term = terms.iter().any(|term| {
            term.node == *node
                && term.token == *token
                && term.acting.iter().any(|(f, u)| {
                    wrote.saturating_add(epsilon) >= *f && wrote <= u.saturating_add(epsilon)
                })
        });
        if !in_term {
            report.bad_writes.push(BadWrite {
                node: node.clone(),
                token: *token,
                t: *t,
                why: "outside the writer's term with that token",
            });
        }
    }

    // Recovery and convergence.
    let followers: BTreeSet<&str> = history
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Follow { follower, .. } => Some(follower.as_str()),
            _ => None,
        })
        .collect();
    for e in &history.events {
        let Event::Heal { name, t, bound } = e else {
            continue;
        };
        let healed = *t;
        let leader_after = terms
            .iter()
            .filter(|term| term.end > healed)
            .map(|term| term.start.saturating_sub(healed))
            .min();
        let window_end = healed
            .saturating_add(*bound)
            .saturating_add(params.follower_slack);
        let followers_after = if followers.is_empty() {
            Some(0)
        } else {
            converged(
                history,
                terms,
                &followers,
                healed,
                window_end,
                params.follower_lag,
            )
            .map(|at| at.saturating_sub(healed))
        };
        report.recoveries.push(Recovery {
            name: name.clone(),
            healed,
            bound: *bound,
            leader_after,
            followers_after,
        });
    }
    report
}

/// `span` minus the `holes`, as sorted disjoint intervals.
fn subtract(span: (u64, u64), holes: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = vec![span];
    for &(hf, hu) in holes {
        out = out
            .into_iter()
            .flat_map(|(f, u)| {
                let mut parts = Vec::new();
                if hu <= f || hf >= u {
                    parts.push((f, u));
                } else {
                    if hf > f {
                        parts.push((f, hf));
                    }
                    if hu < u {
                        parts.push((hu, u));
                    }
                }
                parts
            })
            .collect();
    }
    out
}

/// Where two interval sets first intersect, and the total intersection.
fn intersection(a: &[(u64, u64)], b: &[(u64, u64)]) -> (u64, u64) {
    let mut first = u64::MAX;
    let mut total = 0u64;
    for &(af, au) in a {
        for &(bf, bu) in b {
            let f = af.max(bf);
            let u = au.min(bu);
            if u > f {
                first = first.min(f);
                total += u - f;
            }
        }
    }
    (if total == 0 { 0 } else { first }, total)
}

/// The first moment in `[from, until]` when every follower names a node
/// that led within the last `lag` ns.
fn converged(
    history: &History,
    terms: &[Term],
    followers: &BTreeSet<&str>,
    from: u64,
    until: u64,
    lag: u64,
) -> Option<u64> {
    let mut state: BTreeMap<&str, Option<&str>> = BTreeMap::new();
    let led_recently = |node: &str, at: u64| {
        terms
            .iter()
            .any(|term| term.node == node && term.start <= at && term.end.saturating_add(lag) >= at)
    };
    let all_good = |state: &BTreeMap<&str, Option<&str>>, at: u64| {
        followers.iter().all(|f| {
            state
                .get(f)
                .copied()
                .flatten()
                .is_some_and(|leader| led_recently(leader, at))
        })
    };
    // Candidate moments: every event time in the window (a follower's view
    // or a term's start changes the answer only there), and the window's
    // start.
    let mut checked_start = false;
    for e in &history.events {
        let t = e.time();
        if t > until {
            break;
        }
        if t >= from && !checked_start {
            checked_start = true;
            if all_good(&state, from) {
                return Some(from);
            }
        }
        if let Event::Follow {
            follower, leader, ..
        } = e
        {
            state.insert(follower, leader.as_deref());
        }
        if t >= from && all_good(&state, t) {
            return Some(t);
        }
    }
    if !checked_start && all_good(&state, from) {
        return Some(from);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn start(node: &str, token: u64, t: u64) -> Event {
        Event::TermStart {
            node: node.into(),
            token,
            t: t * MS,
        }
    }
    fn end(node: &str, token: u64, t: u64) -> Event {
        Event::TermEnd {
            node: node.into(),
            token,
            t: t * MS,
        }
    }
    fn write(node: &str, token: u64, t: u64, accepted: bool) -> Event {
        Event::Write {
            node: node.into(),
            token,
            t: t * MS,
            accepted,
            sent: 0,
        }
    }
    fn follow(f: &str, leader: Option<&str>, t: u64) -> Event {
        Event::Follow {
            follower: f.into(),
            leader: leader.map(String::from),
            t: t * MS,
        }
    }
    fn heal(t: u64, bound_ms: u64) -> Event {
        Event::Heal {
            name: "cut".into(),
            t: t * MS,
            bound: bound_ms * MS,
        }
    }

    /// a leads, hands over to b, a fault is healed, b hands over to c;
    /// followers follow; the resource sees every leader's writes in order.
    fn clean() -> Vec<Event> {
        vec![
            start("a", 10, 0),
            write("a", 10, 5, true),
            follow("f1", Some("a"), 6),
            follow("f2", Some("a"), 7),
            end("a", 10, 100),
            start("b", 12, 101),
            write("b", 12, 110, true),
            write("a", 10, 111, false),
            follow("f1", Some("b"), 112),
            follow("f2", Some("b"), 113),
            Event::Fault {
                name: "cut".into(),
                t: 150 * MS,
                expected_limit: false,
            },
            heal(200, 5_000),
            end("b", 12, 300),
            start("c", 13, 301),
            follow("f1", Some("c"), 302),
            follow("f2", Some("c"), 303),
            Event::Lateness {
                node: "a".into(),
                max: 2 * MS,
            },
        ]
    }

    #[test]
    fn a_clean_history_passes() {
        let report = check(&History::new(clean()), &Params::default());
        assert!(report.ok(), "{:?}", report.problems());
        assert_eq!(report.handovers(), 2);
        assert_eq!(report.epsilon, 2 * MS);
        assert_eq!(report.writes, (2, 1));
        assert_eq!(report.recoveries.len(), 1);
        assert_eq!(report.recoveries[0].leader_after, Some(0));
    }

    #[test]
    fn an_overlap_is_flagged_with_its_length() {
        let mut events = clean();
        // b starts 20 ms before a announced its end.
        events.retain(|e| !matches!(e, Event::TermStart { node, .. } if node == "b"));
        events.push(start("b", 12, 80));
        let report = check(&History::new(events), &Params::default());
        assert_eq!(report.overlaps.len(), 1, "{report:?}");
        assert_eq!(report.overlaps[0].length, 20 * MS);
        assert_eq!(report.largest_overlap(), 20 * MS);
        assert!(!report.ok());
    }

    #[test]
    fn an_overlap_within_the_epsilon_is_not_flagged() {
        let mut events = clean();
        events.retain(|e| !matches!(e, Event::TermStart { node, .. } if node == "b"));
        // 1 ms of overlap against a measured epsilon of 2 ms.
        events.push(start("b", 12, 99));
        let report = check(&History::new(events), &Params::default());
        assert!(report.overlaps.is_empty(), "{report:?}");
    }

    #[test]
    fn a_paused_holder_overlaps_only_after_its_resumption() {
        let mut events = clean();
        // a is paused from 50 to 150 ms; b leads from 101; a announces its
        // end at 152, 2 ms after resuming: 2 ms acting together, within an
        // epsilon of 3 ms; with 10 ms it is an overlap.
        events.retain(|e| !matches!(e, Event::TermEnd { node, .. } if node == "a"));
        events.push(Event::Paused {
            node: "a".into(),
            t: 50 * MS,
        });
        events.push(Event::Resumed {
            node: "a".into(),
            t: 150 * MS,
        });
        events.retain(|e| !matches!(e, Event::Lateness { .. }));
        events.push(Event::Lateness {
            node: "a".into(),
            max: 3 * MS,
        });
        let mut ok = events.clone();
        ok.push(end("a", 10, 152));
        // the refused write at 111 came from a while paused: drop it.
        ok.retain(|e| {
            !matches!(
                e,
                Event::Write {
                    accepted: false,
                    ..
                }
            )
        });
        let report = check(&History::new(ok), &Params::default());
        assert!(report.ok(), "{:?}", report.problems());
        let mut late = events;
        late.push(end("a", 10, 160));
        let report = check(&History::new(late), &Params::default());
        assert_eq!(report.overlaps.len(), 1, "{report:?}");
        assert_eq!(report.overlaps[0].length, 10 * MS);
    }

    #[test]
    fn a_killed_leader_term_ends_at_the_kill() {
        let mut events = clean();
        events.retain(|e| !matches!(e, Event::TermEnd { node, .. } if node == "a"));
        events.push(Event::Killed {
            node: "a".into(),
            t: 100 * MS,
        });
        let report = check(&History::new(events), &Params::default());
        assert!(report.ok(), "{:?}", report.problems());
    }

    #[test]
    fn a_token_inversion_is_flagged() {
        let mut events = clean();
        events.retain(|e| !matches!(e, Event::TermStart { node, .. } if node == "c"));
        events.push(start("c", 11, 301));
        let report = check(&History::new(events), &Params::default());
        assert_eq!(report.inversions.len(), 1, "{report:?}");
        assert_eq!(report.inversions[0].after, ("c".to_string(), 11));
        assert!(!report.ok());
    }

    #[test]
    fn a_stale_token_accepted_by_the_resource_is_flagged() {
        let mut events = clean();
        events.retain(|e| {
            !matches!(
                e,
                Event::Write {
                    accepted: false,
                    ..
                }
            )
        });
        // a, deposed, writes with its old token and the resource takes it.
        events.push(write("a", 10, 111, true));
        let report = check(&History::new(events), &Params::default());
        assert!(
            report.bad_writes.iter().any(|w| w.why.starts_with("older")),
            "{report:?}"
        );
        assert!(!report.ok());
    }

    #[test]
    fn a_write_outside_the_writers_term_is_flagged() {
        let mut events = clean();
        // c writes a new, higher token before its term began.
        events.push(write("c", 13, 250, true));
        let report = check(&History::new(events), &Params::default());
        assert!(
            report
                .bad_writes
                .iter()
                .any(|w| w.why.starts_with("outside")),
            "{report:?}"
        );
    }

    #[test]
    fn a_write_is_judged_by_when_it_was_sent() {
        let mut events = clean();
        // Sent by a at 99 ms, in its term; the resource decided at 105 ms.
        let late = |sent| Event::Write {
            node: "a".into(),
            token: 10,
            t: 105 * MS,
            accepted: true,
            sent,
        };
        events.push(late(99 * MS));
        let report = check(&History::new(events.clone()), &Params::default());
        assert!(report.bad_writes.is_empty(), "{report:?}");
        // Sent at 103 ms, after a's term ended at 100 (epsilon 2): flagged.
        events.push(late(103 * MS));
        let report = check(&History::new(events), &Params::default());
        assert_eq!(report.bad_writes.len(), 1, "{report:?}");
    }

    #[test]
    fn a_follower_that_never_converges_is_flagged() {
        let mut events = clean();
        // f2 keeps naming a, who stopped leading at 100 ms.
        events.retain(|e| !matches!(e, Event::Follow { follower, .. } if follower == "f2"));
        events.push(follow("f2", Some("a"), 7));
        let params = Params {
            follower_lag: 10 * MS,
            ..Params::default()
        };
        let report = check(&History::new(events.clone()), &params);
        assert!(!report.ok());
        assert_eq!(report.recoveries[0].followers_after, None, "{report:?}");
        // Once f2 names c, it has converged.
        events.push(follow("f2", Some("c"), 304));
        let report = check(&History::new(events), &params);
        assert!(report.ok(), "{:?}", report.problems());
        assert_eq!(report.recoveries[0].followers_after, Some(104 * MS));
    }

    #[test]
    fn no_leader_within_the_bound_after_a_heal_is_flagged() {
        let mut events = clean();
        // b ends at 180, before the heal; c is elected 10 s after it.
        events.retain(|e| {
            !matches!(e, Event::TermEnd { node, .. } if node == "b")
                && !matches!(e, Event::TermStart { node, .. } if node == "c")
                && !matches!(e, Event::Follow { leader: Some(l), .. } if l == "c")
        });
        events.push(end("b", 12, 180));
        events.push(start("c", 13, 10_200));
        events.push(follow("f1", Some("c"), 10_201));
        events.push(follow("f2", Some("c"), 10_202));
        let report = check(&History::new(events), &Params::default());
        assert_eq!(report.recoveries[0].leader_after, Some(10_000 * MS));
        assert!(!report.ok());
    }

    #[test]
    fn overlaps_under_an_expected_limit_are_reported_apart() {
        let mut events = clean();
        events.retain(|e| !matches!(e, Event::Fault { .. }));
        events.push(Event::Fault {
            name: "restart without persistence".into(),
            t: 150 * MS,
            expected_limit: true,
        });
        // c starts while b still leads, during the limit window.
        events.retain(|e| !matches!(e, Event::TermStart { node, .. } if node == "c"));
        events.push(start("c", 13, 250));
        let report = check(&History::new(events), &Params::default());
        assert!(report.overlaps.is_empty(), "{report:?}");
        assert_eq!(report.expected.len(), 1);
        assert_eq!(report.expected[0].length, 50 * MS);
        assert!(report.ok());
    }

    #[test]
    fn malformed_histories_are_flagged() {
        let events = vec![end("a", 1, 5)];
        let report = check(&History::new(events), &Params::default());
        assert!(!report.ok());
        assert_eq!(report.malformed.len(), 1);
    }
}
