//! Tables and the Markdown report of a nemesis run.

use std::fmt::Write as _;

use crate::driver::Outcome;

fn ms(ns: u64) -> String {
    if ns == u64::MAX {
        "never".into()
    } else {
        format!("{:.1}", ns as f64 / 1e6)
    }
}

/// The per-fault table of one backend (plain text).
pub fn table(o: &Outcome) -> String {
    let mut s = String::new();
    let r = &o.report;
    let _ = writeln!(
        s,
        "\n{} — {} handovers, epsilon {} ms, {} writes accepted / {} refused, {:.0} s",
        o.backend,
        r.handovers(),
        ms(r.epsilon),
        r.writes.0,
        r.writes.1,
        o.took.as_secs_f64()
    );
    let _ = writeln!(
        s,
        "{:<30} {:>5} {:>9} {:>6} {:>8} {:>8} {:>12} {:>10} {:>13} {:>9}",
        "fault",
        "runs",
        "handovers",
        "forced",
        "overlaps",
        "expected",
        "max overlap",
        "inversions",
        "max recovery",
        "bound"
    );
    for (fault, row) in &o.rows {
        let _ = writeln!(
            s,
            "{:<30} {:>5} {:>9} {:>6} {:>8} {:>8} {:>9} ms {:>10} {:>10} ms {:>6} ms",
            fault,
            row.runs,
            row.handovers,
            row.forced,
            row.overlaps,
            row.expected,
            ms(row.largest_overlap),
            row.inversions,
            ms(row.largest_recovery),
            ms(row.bound)
        );
    }
    for p in r.problems() {
        let _ = writeln!(s, "PROBLEM: {p}");
    }
    for e in &o.run_errors {
        let _ = writeln!(s, "RUN ERROR: {e}");
    }
    s
}

/// The last line: totals over what ran.
pub fn summary(outcomes: &[Outcome]) -> String {
    let h: usize = outcomes.iter().map(|o| o.report.handovers()).sum();
    let ov: usize = outcomes.iter().map(|o| o.report.overlaps.len()).sum();
    let inv: usize = outcomes.iter().map(|o| o.report.inversions.len()).sum();
    format!("nemesis: {h} handovers, {ov} overlaps, {inv} inversions")
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    format!("{cpus} CPUs ({model}), Linux {kernel}")
}

/// The whole report as Markdown.
pub fn markdown(outcomes: &[Outcome], quick: bool, command: &str, skipped: &[&str]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Nemesis: leadership under faults\n");
    let _ = writeln!(
        s,
        "Written by `{command}` ({} mode) on {}.\n",
        if quick { "quick" } else { "full" },
        machine()
    );
    let _ = writeln!(s, "{}", METHOD);
    for o in outcomes {
        let r = &o.report;
        let _ = writeln!(
            s,
            "\n## {}\n\n{} handovers in {:.0} s; scheduling epsilon {} ms (largest timer lateness measured in the children); fenced resource: {} writes accepted, {} refused.\n",
            o.backend,
            r.handovers(),
            o.took.as_secs_f64(),
            ms(r.epsilon),
            r.writes.0,
            r.writes.1
        );
        let _ = writeln!(
            s,
            "| fault | runs | handovers | forced by the fault | overlaps | expected (documented limit) | largest overlap | inversions | largest recovery | bound |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for (fault, row) in &o.rows {
            let _ = writeln!(
                s,
                "| {fault} | {} | {} | {} | {} | {} | {} ms | {} | {} ms | {} ms |",
                row.runs,
                row.handovers,
                row.forced,
                row.overlaps,
                row.expected,
                ms(row.largest_overlap),
                row.inversions,
                ms(row.largest_recovery),
                ms(row.bound)
            );
        }
        let problems = r.problems();
        if problems.is_empty() && o.run_errors.is_empty() {
            let _ = writeln!(s, "\nThe checker found nothing wrong.");
        } else {
            let _ = writeln!(s);
            for p in problems.iter().chain(&o.run_errors) {
                let _ = writeln!(s, "- {p}");
            }
        }
    }
    for b in skipped {
        let _ = writeln!(s, "\n## {b}\n\nNot run: its servers are not installed.");
    }
    let _ = writeln!(s, "\n```\n{}\n```", summary(outcomes));
    s
}

const METHOD: &str = "## Method

Each backend gets a real cluster on loopback, started by the nemesis itself:
etcd with 3 members, a 3-server ZooKeeper ensemble, Consul with 3 servers and
2 client agents, and a single Redis primary (AOF, `appendfsync always`).
Every address is on 127.0.0.1. Raft/quorum links and client links pass
through a fault-injecting TCP proxy, which can hold every byte back (a silent
partition, as with lost packets), reset connections, or delay them.

The workload runs in child processes: 3 candidates (anykv-leadership
`Candidate`) that lead for 30–120 ms, write to a fenced resource every 10 ms
while they lead and resign, and 2 followers (`Follower`). A fenced resource
in the driver accepts a write only if its token is at least the highest it
has accepted. Every process stamps its events on CLOCK_MONOTONIC: a term
starts when the candidate reads `true` on its elected stream and ends when
it reads `false`, or at its SIGKILL.

Faults, each held for the lock TTL + 1 s, then healed: SIGKILL and SIGSTOP of
the leading candidate, SIGKILL of an idle candidate, SIGKILL+restart and
SIGSTOP of the server member the leader talks to, a minority partition of
that member (silent and with resets) while its clients stay connected, a cut
between the leader's client and its member, and for Consul SIGKILL+restart
and SIGSTOP of the client agent, for Redis a restart that loses the data.

The checker (`anykv_nemesis::checker`, a pure function with its own tests)
then decides: no two terms act at once beyond the scheduling epsilon (a
paused process does not act until it is resumed); tokens strictly increase
in term order; the resource never accepted a stale token or a write outside
its writer's term; after every heal a leader exists within the lock TTL +
the backend's session slack + 2 s, and every follower names a current
leader. Overlaps under a fault the backend cannot survive (a Redis restart
that loses the data) are counted apart as the documented limit, with their
size.";
