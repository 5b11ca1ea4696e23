//! Service discovery: three instances register, one leaves, and a watcher
//! prints the live set as it changes. Ends by itself after a few seconds.
//!
//! ```text
//! cargo run --example discovery                     # on memory://
//! cargo run --features full --example discovery -- redis://127.0.0.1:6379/demo
//! ```
//! Each instance registers through a handle of its own (its own session), as
//! separate processes would; the watcher uses another one.

#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use anykv_recipes::discovery::{Discovery, Instance};
use futures::StreamExt;

/// How long the example waits for each change before giving up.
const PATIENCE: Duration = Duration::from_secs(30);

#[tokio::main]
async fn main() -> anykv::Result<()> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "memory://discovery-demo".to_owned());
    let start = Instant::now();
    let stamp = move || format!("{:>7.3}s", start.elapsed().as_secs_f64());

    let watcher_store = anykv::open(&url).await?;
    let watcher = Discovery::new(watcher_store.clone(), "discovery-demo");
    let (mut sets, mut errors) = watcher.watch("web").await?;
    println!(
        "{} watching service \"web\" on {}",
        stamp(),
        anykv::url::redact(&url)
    );

    // Prints sets until one has `count` instances (or PATIENCE passes).
    let mut show_until = async |count: usize| -> anykv::Result<()> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            tokio::select! {
                set = sets.next() => {
                    let Some(set) = set else { return Ok(()) };
                    let live: Vec<String> =
                        set.iter().map(|i| format!("{}@{}", i.id, i.endpoint)).collect();
                    println!("{} live: [{}]", stamp(), live.join(", "));
                    if set.len() == count {
                        return Ok(());
                    }
                }
                Some(error) = errors.next() => println!("{} watch error: {error}", stamp()),
                () = tokio::time::sleep_until(deadline) => {
                    println!("{} gave up waiting for {count} instances", stamp());
                    return Ok(());
                }
            }
        }
    };
    show_until(0).await?;

    let mut registrations = Vec::new();
    let mut stores = Vec::new();
    for n in 1..=3 {
        let store = anykv::open(&url).await?;
        let instance = Instance::new("web", format!("web-{n}"), format!("10.0.0.{n}:8080"))
            .with_metadata("zone", if n % 2 == 0 { "b" } else { "a" });
        println!("{} register {}", stamp(), instance.id);
        registrations.push(
            Discovery::new(store.clone(), "discovery-demo")
                .register(instance)
                .await?,
        );
        stores.push(store);
        show_until(n).await?;
    }

    let leaving = registrations.remove(1);
    println!("{} deregister {}", stamp(), leaving.instance().id);
    leaving.deregister().await?;
    show_until(2).await?;

    println!(
        "{} listed once: {:?}",
        stamp(),
        watcher
            .instances("web")
            .await?
            .iter()
            .map(|i| i.id.as_str())
            .collect::<Vec<_>>()
    );
    for registration in registrations {
        registration.deregister().await?;
    }
    show_until(0).await?;
    for store in stores {
        store.close().await?;
    }
    watcher_store.close().await
}
