//! The recorded history of a nemesis run: what every process saw and did,
//! stamped on CLOCK_MONOTONIC, which all processes of one machine share.
//!
//! Children write their events as JSON lines on stdout; the driver adds its
//! own (faults, heals, kills, pauses, the fenced resource's verdicts) and
//! merges everything into one [`History`], which [`crate::checker`] judges.

use serde::{Deserialize, Serialize};

/// Nanoseconds on CLOCK_MONOTONIC: comparable across the processes of one
/// machine (unlike `std::time::Instant`, whose origin is private).
pub fn now() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(ts) => {
            let secs = u64::try_from(ts.tv_sec()).unwrap_or(0);
            let nanos = u64::try_from(ts.tv_nsec()).unwrap_or(0);
            secs.saturating_mul(1_000_000_000).saturating_add(nanos)
        }
        // CLOCK_MONOTONIC cannot fail on Linux; 0 would be flagged by the
        // checker as an out-of-order history rather than hidden.
        Err(_) => 0,
    }
}

/// One recorded event. `t` is always [`now`] at the moment it happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum Event {
    /// A candidate read `true` on its elected stream: its term with this
    /// fencing token began (after the store granted the lock).
    TermStart {
        /// The candidate's node id.
        node: String,
        /// The term's fencing token.
        token: u64,
        /// When it learnt it leads.
        t: u64,
    },
    /// The candidate read `false` after the term with `token`: it announced
    /// the end of its term (resigned, or its lock was or may be lost).
    TermEnd {
        /// The candidate's node id.
        node: String,
        /// The token of the term that ended.
        token: u64,
        /// When it announced the end.
        t: u64,
    },
    /// The driver SIGKILLed the process of `node`; an open term of it ends
    /// here (a killed process cannot act).
    Killed {
        /// The node id of the killed process.
        node: String,
        /// When the signal was sent.
        t: u64,
    },
    /// The driver SIGSTOPped the process of `node`.
    Paused {
        /// The node id of the paused process.
        node: String,
        /// When the signal was sent.
        t: u64,
    },
    /// The driver SIGCONTed the process of `node`.
    Resumed {
        /// The node id of the resumed process.
        node: String,
        /// When the signal was sent.
        t: u64,
    },
    /// A write to the fenced resource and its verdict, recorded by the
    /// resource (which refuses tokens older than the newest it has seen).
    Write {
        /// The writer's node id.
        node: String,
        /// The token the write carried.
        token: u64,
        /// When the resource decided.
        t: u64,
        /// Whether the resource accepted it.
        accepted: bool,
        /// When the writer sent it, having checked that it leads (0: not
        /// known). The in-term check uses this; `t` orders the verdicts.
        #[serde(default)]
        sent: u64,
    },
    /// A follower's leader stream said `leader`.
    Follow {
        /// The follower's id.
        follower: String,
        /// The leader it names (`None`: no leader).
        leader: Option<String>,
        /// When it read it.
        t: u64,
    },
    /// The driver injected a fault.
    Fault {
        /// What, e.g. `member-kill zk2`.
        name: String,
        /// When.
        t: u64,
        /// The backend cannot keep its guarantee under this fault (a
        /// documented limit): overlaps until the next heal are reported as
        /// expected, with their size, instead of as violations.
        expected_limit: bool,
    },
    /// The driver healed the fault(s) in force.
    Heal {
        /// What was healed.
        name: String,
        /// When.
        t: u64,
        /// A leader must exist again within this many ns after `t`.
        bound: u64,
    },
    /// A child's largest timer lateness: how much later than asked its
    /// runtime woke it, over the run (the scheduling epsilon is measured
    /// from these).
    Lateness {
        /// The child's id.
        node: String,
        /// Largest lateness seen, in ns.
        max: u64,
    },
}

impl Event {
    /// The event's time (`Lateness` has none: 0).
    pub fn time(&self) -> u64 {
        match self {
            Event::TermStart { t, .. }
            | Event::TermEnd { t, .. }
            | Event::Killed { t, .. }
            | Event::Paused { t, .. }
            | Event::Resumed { t, .. }
            | Event::Write { t, .. }
            | Event::Follow { t, .. }
            | Event::Fault { t, .. }
            | Event::Heal { t, .. } => *t,
            Event::Lateness { .. } => 0,
        }
    }

    /// One JSON line (no newline).
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses one JSON line; `None` for anything else a child printed.
    pub fn from_line(line: &str) -> Option<Event> {
        serde_json::from_str(line.trim()).ok()
    }
}

/// A merged history, in time order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// The events, sorted by [`Event::time`] (stable for equal times).
    pub events: Vec<Event>,
}

impl History {
    /// A history of these events, sorted by time.
    pub fn new(mut events: Vec<Event>) -> History {
        events.sort_by_key(Event::time);
        History { events }
    }
}
