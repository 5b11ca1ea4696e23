//! A tour of anykv in one minute.
//!
//! ```text
//! cargo run --example quickstart                       # embedded memory:// store
//! cargo run --example quickstart -- etcd://127.0.0.1:2379/demo   # any store URL
//! ANYKV_URL=redis://127.0.0.1:6379/demo cargo run --example quickstart
//! ```
//! (Networked stores need the example built with their feature, e.g.
//! `--features full`.)

#![allow(clippy::print_stdout)]

use std::time::Duration;

use anykv::StoreExt;
use anykv::{Error, LockOptions, PutOptions};
use futures::StreamExt;

#[tokio::main]
async fn main() -> anykv::Result<()> {
    let url = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("ANYKV_URL").ok())
        .unwrap_or_else(|| "memory://".to_owned());
    // Only ever print a URL through `redact`: it may hold a password.
    println!("Opening {}", anykv::url::redact(&url));
    let store = anykv::open(&url).await?;
    let caps = store.capabilities();
    println!(
        "  backend: {}, largest value: {} bytes, session TTL: {:?}",
        caps.backend, caps.max_value_size, caps.session_ttl
    );

    // Start from a clean namespace.
    store.delete_tree("quickstart").await?;

    println!("\n1. Plain keys");
    let put = store
        .put("quickstart/config/color", "blue", PutOptions::new())
        .await?;
    println!(
        "  put   quickstart/config/color = blue  (version {})",
        put.last_index
    );
    let got = store.get("quickstart/config/color").await?;
    println!(
        "  get   {} = {}  (version {})",
        got.key,
        String::from_utf8_lossy(&got.value),
        got.last_index
    );
    store
        .put("quickstart/config/size", "XL", PutOptions::new())
        .await?;
    let listed = store.list("quickstart/config").await?;
    println!("  list  quickstart/config -> {} keys:", listed.len());
    for pair in &listed {
        println!(
            "          {} = {}",
            pair.key,
            String::from_utf8_lossy(&pair.value)
        );
    }

    println!("\n2. Compare-and-swap");
    let next = store
        .atomic_put(
            "quickstart/config/color",
            "green",
            Some(&got),
            PutOptions::new(),
        )
        .await?;
    println!(
        "  CAS from version {} to green: ok, now version {}",
        got.last_index, next.last_index
    );
    match store
        .atomic_put(
            "quickstart/config/color",
            "red",
            Some(&got),
            PutOptions::new(),
        )
        .await
    {
        Err(Error::KeyModified { key }) => {
            println!(
                "  CAS again with the stale version {}: refused, {key} was modified",
                got.last_index
            )
        }
        other => println!("  unexpected: {other:?}"),
    }

    println!("\n3. Watching a key while another task writes it");
    let mut watch = store.watch("quickstart/status").await?;
    let writer_store = store.clone();
    let writer = tokio::spawn(async move {
        for state in ["starting", "running", "stopping"] {
            tokio::time::sleep(Duration::from_millis(100)).await;
            writer_store
                .put("quickstart/status", state, PutOptions::new())
                .await?;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        writer_store.delete("quickstart/status").await
    });
    let mut seen = 0;
    while let Some(event) = watch.next().await {
        match event? {
            Some(pair) => println!(
                "  watch: quickstart/status is now {:?} (version {})",
                String::from_utf8_lossy(&pair.value),
                pair.last_index
            ),
            None if seen == 0 => println!("  watch: quickstart/status does not exist yet"),
            None => {
                println!("  watch: quickstart/status was deleted");
                break;
            }
        }
        seen += 1;
    }
    drop(watch); // dropping the stream ends the watch
    writer.await.map_err(|e| Error::InvalidArgument {
        key: "quickstart/status".into(),
        reason: e.to_string(),
    })??;

    println!("\n4. A lock with a fencing token");
    let lock = store
        .new_lock("quickstart/lock", LockOptions::new("quickstart-worker"))
        .await?;
    let guard = lock.lock().await?;
    let holder = store.get("quickstart/lock").await?;
    println!(
        "  holding quickstart/lock as {:?} with fencing token {}",
        String::from_utf8_lossy(&holder.value),
        guard.fencing_token()
    );
    match lock.try_lock().await {
        Err(Error::Locked { .. }) => println!("  a second try_lock is refused while it is held"),
        other => println!("  unexpected: {other:?}"),
    }
    let first_token = guard.fencing_token();
    guard.unlock().await?;
    let guard = lock.lock().await?;
    println!(
        "  released and taken again: fencing token {} > {}",
        guard.fencing_token(),
        first_token
    );
    guard.unlock().await?;

    println!("\n5. Keys that expire");
    store
        .put("quickstart/session", "alive", PutOptions::ephemeral())
        .await?;
    println!("  wrote quickstart/session as ephemeral: it lives as long as this handle's session");

    store.delete_tree("quickstart").await?;
    store.close().await?;
    println!("\nClosed the store: its session, ephemeral keys and watches are gone. Done.");
    Ok(())
}
