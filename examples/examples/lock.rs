//! Two workers take turns on one lock and write to a shared resource that
//! checks fencing tokens, so a stale holder's write would be refused.
//!
//! ```text
//! cargo run --example lock                            # on memory://lock-demo
//! cargo run --features full --example lock -- redis://127.0.0.1:6379/demo
//! ```
//! Each worker has its own handle (its own session), as two processes would.

#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use anykv::StoreExt;
use anykv::{Error, LockOptions, PutOptions, Store};

const LOCK: &str = "lock-demo/lock";
const RESOURCE: &str = "lock-demo/resource";
const TURNS: usize = 3;

#[tokio::main]
async fn main() -> anykv::Result<()> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "memory://lock-demo".to_owned());
    // Opened first and kept: a `memory://NAME` store lives as long as one
    // of its handles does.
    let store = anykv::open(&url).await?;
    let start = Instant::now();
    println!(
        "two workers, {TURNS} turns each, on {}",
        anykv::url::redact(&url)
    );
    let mut workers = Vec::new();
    for name in ["worker-a", "worker-b"] {
        let store = anykv::open(&url).await?;
        workers.push(tokio::spawn(worker(store, name, start)));
    }
    for worker in workers {
        worker.await.map_err(|e| Error::InvalidArgument {
            key: LOCK.into(),
            reason: e.to_string(),
        })??;
    }
    let last = store.get(RESOURCE).await?;
    println!("resource: {}", String::from_utf8_lossy(&last.value));
    // An ex-holder that was paused while others took over wakes up and
    // writes with its old token: the resource refuses it.
    let refused = !write_fenced(&store, "a paused ex-holder", 1).await?;
    println!("a late write with the stale token 1 is refused: {refused}");
    store.delete_tree("lock-demo").await?;
    store.close().await
}

async fn worker(store: Arc<dyn Store>, name: &'static str, start: Instant) -> anykv::Result<()> {
    let stamp = || format!("{:>7.3}s {name}", start.elapsed().as_secs_f64());
    let lock = store.new_lock(LOCK, LockOptions::new(name)).await?;
    for _ in 0..TURNS {
        let guard = match lock.try_lock().await {
            Ok(guard) => guard,
            Err(Error::Locked { .. }) => {
                println!(
                    "{} try_lock: held by {:?}, waiting",
                    stamp(),
                    holder(&store).await
                );
                lock.lock().await?
            }
            Err(e) => return Err(e),
        };
        let token = guard.fencing_token();
        println!("{} holds the lock, fencing token {token}", stamp());
        tokio::select! {
            _ = guard.lost() => println!("{} lost the lock!", stamp()),
            result = write_fenced(&store, name, token) => match result? {
                true => println!("{} wrote the resource with token {token}", stamp()),
                false => println!("{} the resource refused token {token}", stamp()),
            },
        }
        tokio::time::sleep(Duration::from_millis(300)).await; // "work"
        guard.unlock().await?;
        println!("{} released", stamp());
        // Let the other worker have a turn.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn holder(store: &Arc<dyn Store>) -> Option<String> {
    let pair = store.get(LOCK).await.ok()?;
    Some(String::from_utf8_lossy(&pair.value).into_owned())
}

/// The resource keeps the highest token it accepted and refuses lower ones:
/// compare-and-swap on its own version makes the check-and-write atomic.
async fn write_fenced(store: &Arc<dyn Store>, name: &str, token: u64) -> anykv::Result<bool> {
    loop {
        let current = match store.get(RESOURCE).await {
            Ok(pair) => Some(pair),
            Err(Error::KeyNotFound { .. }) => None,
            Err(e) => return Err(e),
        };
        let highest = current
            .as_ref()
            .and_then(|p| {
                std::str::from_utf8(&p.value)
                    .ok()?
                    .split(' ')
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or(0u64);
        if token < highest {
            return Ok(false);
        }
        let value = format!("{token} written by {name}");
        match store
            .atomic_put(RESOURCE, value, current.as_ref(), PutOptions::new())
            .await
        {
            Ok(_) => return Ok(true),
            Err(
                Error::KeyModified { .. } | Error::KeyExists { .. } | Error::KeyNotFound { .. },
            ) => {}
            Err(e) => return Err(e),
        }
    }
}
