//! The key commands: `get`, `put`, `rm`, `ls`, `watch`, `watch-tree`.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;

use anykv::prelude::*;
use anykv::{Store, TreeChange};
use futures::StreamExt;
use serde_json::json;

use crate::args::PutArgs;
use crate::connect::Target;
use crate::exit::{CliError, FAILURE, UNAVAILABLE};
use crate::output::Output;
use crate::signals::Signals;

/// `get KEY`: the value (a newline added unless `raw`), or its JSON.
pub async fn get(
    store: &Arc<dyn Store>,
    target: &Target,
    out: Output,
    key: &str,
    raw: bool,
) -> Result<(), CliError> {
    let pair = store.get(key).await.map_err(|e| target.error(&e))?;
    if out.json {
        out.object(crate::output::pair_json(&pair))
    } else if raw {
        out.write(&pair.value)
    } else {
        let mut bytes = pair.value.to_vec();
        bytes.push(b'\n');
        out.write(&bytes)
    }
}

/// `put KEY VALUE`: prints the new version.
pub async fn put(
    store: &Arc<dyn Store>,
    target: &Target,
    out: Output,
    args: &PutArgs,
) -> Result<(), CliError> {
    let value: Bytes = if args.value == "-" {
        let mut buffer = Vec::new();
        std::io::stdin()
            .lock()
            .read_to_end(&mut buffer)
            .map_err(|e| {
                CliError::new(FAILURE, format!("cannot read the value from stdin: {e}"))
            })?;
        buffer.into()
    } else {
        Bytes::from(args.value.clone().into_bytes())
    };
    let mut options = match args.ttl {
        Some(ttl) => PutOptions::ttl(ttl),
        None => PutOptions::new(),
    };
    if args.create {
        options = options.with_mode(PutMode::Create);
    } else if let Some(version) = args.if_version {
        options = options.with_mode(PutMode::Update(version));
    }
    let pair = store
        .put(&args.key, value, options)
        .await
        .map_err(|e| target.error(&e))?;
    if out.json {
        let mut object = crate::output::pair_json(&pair);
        // The value is what was written; scripts need the version.
        object.remove("value");
        object.remove("encoding");
        out.object(object)
    } else {
        out.line(&format!("{} version {}", pair.key, pair.last_index))
    }
}

/// `rm KEY`: deletes the key, the tree below it with `recursive`.
pub async fn rm(
    store: &Arc<dyn Store>,
    target: &Target,
    out: Output,
    key: &str,
    recursive: bool,
    if_version: Option<u64>,
) -> Result<(), CliError> {
    let result = if recursive {
        store.delete_tree(key).await
    } else {
        let mut options = DeleteOptions::new();
        if let Some(version) = if_version {
            options = options.if_version(version);
        }
        store.delete_opts(key, options).await
    };
    result.map_err(|e| target.error(&e))?;
    if out.json {
        out.object(
            [
                ("key".to_owned(), json!(key)),
                ("deleted".to_owned(), json!(true)),
                ("recursive".to_owned(), json!(recursive)),
            ]
            .into_iter()
            .collect(),
        )
    } else {
        Ok(())
    }
}

/// `ls PREFIX`: one line per key.
pub async fn ls(
    store: &Arc<dyn Store>,
    target: &Target,
    out: Output,
    prefix: &str,
) -> Result<(), CliError> {
    let pairs = store.list(prefix).await.map_err(|e| target.error(&e))?;
    for pair in &pairs {
        out.pair(pair)?;
    }
    Ok(())
}

/// `watch KEY`: the current state, then every change, until a signal.
pub async fn watch(
    store: &Arc<dyn Store>,
    target: &Target,
    out: Output,
    key: &str,
    signals: &mut Signals,
) -> Result<(), CliError> {
    let mut stream = store.watch(key).await.map_err(|e| target.error(&e))?;
    loop {
        tokio::select! {
            _ = signals.next() => return Ok(()),
            item = stream.next() => match item {
                Some(Ok(Some(pair))) => out.put_event(&pair)?,
                Some(Ok(None)) => out.delete_event(key)?,
                Some(Err(e)) if e.is_transient() => {
                    crate::warn(&target.scrub(&format!("watch of {key:?}: {}", crate::exit::describe(&e))));
                }
                Some(Err(e)) => return Err(target.error(&e)),
                None => return Err(CliError::new(UNAVAILABLE, format!("the watch of {key:?} ended"))),
            },
        }
    }
}

/// `watch-tree PREFIX`: every key below PREFIX as a put event, then each
/// change as a put or delete event, until a signal.
pub async fn watch_tree(
    store: &Arc<dyn Store>,
    target: &Target,
    out: Output,
    prefix: &str,
    signals: &mut Signals,
) -> Result<(), CliError> {
    let mut stream = store
        .watch_tree_changes(prefix)
        .await
        .map_err(|e| target.error(&e))?;
    let mut known: BTreeMap<String, KvPair> = BTreeMap::new();
    loop {
        tokio::select! {
            _ = signals.next() => return Ok(()),
            item = stream.next() => match item {
                Some(Ok(TreeChange::Changed { key, pair })) => {
                    match &pair {
                        Some(pair) => out.put_event(pair)?,
                        None => out.delete_event(&key)?,
                    }
                    TreeChange::Changed { key, pair }.apply(&mut known);
                }
                Some(Ok(TreeChange::Snapshot(listing))) => {
                    // The first item, or a resync: print what differs from
                    // what was printed so far.
                    let now: BTreeMap<String, KvPair> =
                        listing.into_iter().map(|p| (p.key.clone(), p)).collect();
                    for key in known.keys() {
                        if !now.contains_key(key) {
                            out.delete_event(key)?;
                        }
                    }
                    for (key, pair) in &now {
                        if known.get(key).map(|p| p.last_index) != Some(pair.last_index) {
                            out.put_event(pair)?;
                        }
                    }
                    known = now;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) if e.is_transient() => {
                    crate::warn(&target.scrub(&format!("watch of {prefix:?}: {}", crate::exit::describe(&e))));
                }
                Some(Err(e)) => return Err(target.error(&e)),
                None => return Err(CliError::new(UNAVAILABLE, format!("the watch of {prefix:?} ended"))),
            },
        }
    }
}
