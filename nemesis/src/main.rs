//! `nemesis`: leadership under faults on real clusters, checked.
//!
//! `nemesis run [--quick] [--backend NAME] [--out FILE]` runs every backend
//! whose servers are installed (or the one named), prints a table per
//! backend × fault and, with `--out`, writes it as Markdown with the
//! machine, the method and the command. Its last line is
//! `nemesis: H handovers, O overlaps, I inversions`. It exits non-zero when
//! the checker found a violation (an overlap beyond the epsilon, a token
//! inversion, a stale or out-of-term write accepted, a follower that did
//! not converge, a recovery beyond its bound), or when a backend's servers
//! are missing under `CI=true`.
//!
//! `nemesis child …` is the workload process the driver starts.

#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::time::Duration;

use anykv_nemesis::driver::{self, Outcome, Settings};
use anykv_nemesis::target::BACKENDS;
use anykv_nemesis::workload::{self, Role};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Leadership under faults on real clusters, checked")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the nemesis.
    Run {
        /// Every fault once and at least 100 handovers per backend.
        #[arg(long)]
        quick: bool,
        /// Only this backend (etcd, consul, zookeeper, redis).
        #[arg(long)]
        backend: Option<String>,
        /// Write the report as Markdown here.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Where clusters keep data and logs.
        #[arg(long, default_value = "/tmp/anykv-nemesis")]
        dir: PathBuf,
        /// The command line to print in the report.
        #[arg(long, default_value = "scripts/nemesis.sh")]
        command_line: String,
    },
    /// One workload process (started by `run`).
    Child {
        #[arg(long)]
        url: String,
        #[arg(long)]
        key: String,
        #[arg(long)]
        node: String,
        #[arg(long)]
        resource: std::net::SocketAddr,
        /// Term length range in ms, e.g. 30-120.
        #[arg(long, default_value = "30-120")]
        hold_ms: String,
        #[arg(long)]
        follower: bool,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Logs go to stderr (the children's stderr is their log file); stdout
    // carries the children's events. RUST_LOG overrides the default.
    let default = match cli.command {
        Cmd::Child { .. } => "info",
        Cmd::Run { .. } => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nemesis: cannot start a runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match cli.command {
        Cmd::Child {
            url,
            key,
            node,
            resource,
            hold_ms,
            follower,
        } => {
            let hold = parse_range(&hold_ms).unwrap_or((30, 120));
            let role = if follower {
                Role::Follower
            } else {
                Role::Candidate {
                    hold,
                    resource,
                    write_every: Duration::from_millis(10),
                }
            };
            match runtime.block_on(workload::run(&url, &key, &node, role)) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("nemesis child {node}: {e}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
        Cmd::Run {
            quick,
            backend,
            out,
            dir,
            command_line,
        } => runtime.block_on(async {
            // SIGINT or SIGTERM ends the run through its drops, which kill
            // every cluster member and child it started.
            let terminated = async {
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(mut term) => {
                        tokio::select! {
                            _ = term.recv() => {}
                            _ = tokio::signal::ctrl_c() => {}
                        }
                    }
                    Err(_) => {
                        let _ = tokio::signal::ctrl_c().await;
                    }
                }
            };
            tokio::select! {
                code = run(quick, backend, out, dir, command_line) => code,
                () = terminated => {
                    eprintln!("nemesis: interrupted; stopping everything it started");
                    std::process::ExitCode::FAILURE
                }
            }
        }),
    }
}

fn parse_range(s: &str) -> Option<(u64, u64)> {
    let (a, b) = s.split_once('-')?;
    let (a, b) = (a.parse().ok()?, b.parse().ok()?);
    (a <= b).then_some((a, b))
}

async fn run(
    quick: bool,
    backend: Option<String>,
    out: Option<PathBuf>,
    dir: PathBuf,
    command_line: String,
) -> std::process::ExitCode {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("nemesis: cannot find its own binary: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let settings = if quick {
        Settings {
            exe,
            dir,
            rounds: 1,
            min_handovers: 100,
            time_limit: Duration::from_secs(240),
            calm: Duration::from_secs(2),
            hold: (30, 120),
        }
    } else {
        Settings {
            exe,
            dir,
            rounds: 2,
            min_handovers: 1000,
            time_limit: Duration::from_secs(1200),
            calm: Duration::from_secs(4),
            hold: (30, 120),
        }
    };
    let under_ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    let backends: Vec<&str> = match &backend {
        Some(b) => match BACKENDS.iter().find(|x| **x == b.as_str()) {
            Some(b) => vec![*b],
            None => {
                eprintln!(
                    "nemesis: unknown backend {b:?}; known: {}",
                    BACKENDS.join(", ")
                );
                return std::process::ExitCode::FAILURE;
            }
        },
        None => BACKENDS.to_vec(),
    };
    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut failed = false;
    let mut skipped = Vec::new();
    for b in backends {
        eprintln!("[nemesis] {b}: starting the cluster");
        match driver::run_backend(b, &settings).await {
            Ok(Some(outcome)) => {
                print!("{}", anykv_nemesis::report::table(&outcome));
                if !outcome.report.ok() || !outcome.run_errors.is_empty() {
                    failed = true;
                }
                outcomes.push(outcome);
            }
            Ok(None) => {
                eprintln!("[nemesis] {b}: servers not installed (scripts/services.sh install)");
                skipped.push(b);
                if under_ci {
                    failed = true;
                }
            }
            Err(e) => {
                eprintln!("[nemesis] {b}: the run failed: {e}");
                failed = true;
            }
        }
    }
    if let Some(out) = out {
        let md = anykv_nemesis::report::markdown(&outcomes, quick, &command_line, &skipped);
        if let Err(e) = std::fs::write(&out, md) {
            eprintln!("nemesis: cannot write {}: {e}", out.display());
            failed = true;
        }
    }
    println!("{}", anykv_nemesis::report::summary(&outcomes));
    if failed {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}
