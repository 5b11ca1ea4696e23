//! `lock`, `elect` and `follow`: commands run under a lock or while
//! leader, and the leader of an election.

use std::sync::Arc;

use anykv::prelude::*;
use anykv::Store;
use anykv_leadership::{Candidate, Follower};
use futures::StreamExt;
use serde_json::json;

use crate::args::RunArgs;
use crate::child::Child;
use crate::connect::Target;
use crate::exit::{describe, signal_code, CliError, LOST, OK, UNAVAILABLE};
use crate::output::Output;
use crate::signals::Signals;

/// The default identity of a lock holder or candidate: `host-pid`.
pub fn default_id() -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "anykv".to_owned());
    format!("{host}-{}", std::process::id())
}

/// The end of a command's run: its exit code, as the CLI's result.
fn exited(code: u8) -> Result<(), CliError> {
    if code == OK {
        Ok(())
    } else {
        Err(CliError::silent(code))
    }
}

/// The environment a command gets: its fencing token and key.
fn child_env(key: &str, token: u64) -> [(&'static str, String); 2] {
    [
        ("ANYKV_FENCING_TOKEN", token.to_string()),
        ("ANYKV_LOCK_KEY", key.to_owned()),
    ]
}

/// `lock KEY -- CMD…`.
pub async fn lock(
    store: &Arc<dyn Store>,
    target: &Target,
    id: String,
    try_only: bool,
    run: &RunArgs,
    signals: &mut Signals,
) -> Result<(), CliError> {
    let key = run.key.as_str();
    let lock = store
        .new_lock(key, LockOptions::new(id))
        .await
        .map_err(|e| target.error(&e))?;
    let acquire = async {
        if try_only {
            lock.try_lock().await
        } else {
            lock.lock().await
        }
    };
    let guard = tokio::select! {
        guard = acquire => guard.map_err(|e| target.error(&e))?,
        signal = signals.next() => return Err(CliError::silent(signal_code(signal as i32))),
    };
    let mut child = match Child::spawn(&run.command, &child_env(key, guard.fencing_token())) {
        Ok(child) => child,
        Err(error) => {
            let _ = guard.unlock().await;
            return Err(error);
        }
    };
    let lost = guard.lost();
    tokio::pin!(lost);
    let ended = loop {
        tokio::select! {
            code = child.wait() => break Some(code?),
            () = &mut lost => break None,
            signal = signals.next() => child.signal(signal),
        }
    };
    match ended {
        Some(code) => {
            if let Err(error) = guard.unlock().await {
                crate::warn(&target.scrub(&format!(
                    "releasing lock {key:?} after {:?} ended: {}",
                    child.name(),
                    describe(&error)
                )));
            }
            exited(code)
        }
        None => {
            crate::warn(&format!(
                "lock {key:?} was lost: ending {:?} (SIGTERM, SIGKILL after {:?})",
                child.name(),
                run.grace
            ));
            let code = child.end(run.grace).await?;
            let _ = guard.unlock().await;
            Err(CliError::new(
                LOST,
                format!(
                    "lock {key:?} was lost; {:?} was ended (its exit code: {code})",
                    child.name()
                ),
            ))
        }
    }
}

/// Waits for `child` if there is one, forever otherwise.
async fn wait_for(child: &mut Option<Child>) -> Result<u8, CliError> {
    match child.as_mut() {
        Some(child) => child.wait().await,
        None => std::future::pending().await,
    }
}

/// `elect KEY -- CMD…`.
pub async fn elect(
    store: &Arc<dyn Store>,
    target: &Target,
    id: String,
    once: bool,
    run: &RunArgs,
    signals: &mut Signals,
) -> Result<(), CliError> {
    let key = run.key.as_str();
    let candidate = Candidate::new(store.clone(), key, id.clone());
    let (mut elected, mut errors) = candidate
        .run_for_election()
        .await
        .map_err(|e| target.error(&e))?;
    let mut child: Option<Child> = None;
    let result = loop {
        tokio::select! {
            code = wait_for(&mut child) => {
                break code.and_then(exited);
            }
            item = elected.next() => match item {
                Some(true) if child.is_none() => {
                    // None: the term has already ended; its `false` follows.
                    if let Some(token) = candidate.leader_token() {
                        crate::info(&format!("{id:?} leads {key:?} (fencing token {token}): starting {:?}", run.command.first().map_or("", String::as_str)));
                        match Child::spawn(&run.command, &child_env(key, token)) {
                            Ok(started) => child = Some(started),
                            Err(error) => break Err(error),
                        }
                    }
                }
                Some(true) => {}
                Some(false) => {
                    if let Some(mut running) = child.take() {
                        crate::warn(&format!(
                            "leadership of {key:?} was lost: ending {:?} (SIGTERM, SIGKILL after {:?})",
                            running.name(), run.grace
                        ));
                        let code = match running.end(run.grace).await {
                            Ok(code) => code,
                            Err(error) => break Err(error),
                        };
                        if once {
                            break Err(CliError::new(LOST, format!(
                                "leadership of {key:?} was lost; {:?} was ended (its exit code: {code})",
                                running.name()
                            )));
                        }
                        crate::info(&format!("campaigning again for {key:?}"));
                    }
                }
                None => {
                    if let Some(mut running) = child.take() {
                        let _ = running.end(run.grace).await;
                    }
                    break Err(CliError::new(UNAVAILABLE, format!(
                        "the campaign for {key:?} ended: the store {} was closed", target.shown
                    )));
                }
            },
            Some(error) = errors.next() => {
                crate::warn(&target.scrub(&format!("campaign for {key:?}: {}", describe(&error))));
            }
            signal = signals.next() => match &child {
                Some(running) => running.signal(signal),
                None => break Err(CliError::silent(signal_code(signal as i32))),
            },
        }
    };
    candidate.stop().await;
    result
}

/// `follow KEY`: the leader, then every change, until a signal.
pub async fn follow(
    store: &Arc<dyn Store>,
    target: &Target,
    out: Output,
    key: &str,
    signals: &mut Signals,
) -> Result<(), CliError> {
    let follower = Follower::new(store.clone(), key);
    let (mut leaders, mut errors) = follower
        .follow_election()
        .await
        .map_err(|e| target.error(&e))?;
    loop {
        tokio::select! {
            _ = signals.next() => return Ok(()),
            item = leaders.next() => match item {
                Some(leader) => {
                    if out.json {
                        out.object([
                            ("key".to_owned(), json!(key)),
                            ("leader".to_owned(), json!(leader)),
                        ].into_iter().collect())?;
                    } else {
                        match leader {
                            Some(id) => out.line(&format!("leader {id}"))?,
                            None => out.line("no leader")?,
                        }
                    }
                }
                None => return Err(CliError::new(UNAVAILABLE, format!(
                    "following {key:?} ended: the store {} was closed", target.shown
                ))),
            },
            Some(error) = errors.next() => {
                crate::warn(&target.scrub(&format!("following {key:?}: {}", describe(&error))));
            }
        }
    }
}
