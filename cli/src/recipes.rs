//! The recipe commands: `queue push|pop|len` (and `members`, service
//! discovery), over anykv-recipes.

use std::sync::Arc;

use anykv::Store;
use anykv_recipes::discovery::{Discovery, Instance};
use anykv_recipes::queue::Queue;
use futures::StreamExt;
use serde_json::json;

use crate::args::QueueCommand;
use crate::connect::Target;
use crate::exit::{signal_code, CliError, NOT_FOUND};
use crate::output::Output;
use crate::signals::Signals;

/// `queue push|pop|len NAME …`.
pub async fn queue(
    store: &Arc<dyn Store>,
    target: &Target,
    out: Output,
    command: &QueueCommand,
    signals: &mut Signals,
) -> Result<(), CliError> {
    match command {
        QueueCommand::Push { name, item } => {
            let queue = Queue::new(store.clone(), name).map_err(|e| target.error(&e))?;
            let seq = queue
                .push(item.clone().into_bytes())
                .await
                .map_err(|e| target.error(&e))?;
            if out.json {
                out.object(object(json!({ "queue": name, "seq": seq })))
            } else {
                out.line(&seq.to_string())
            }
        }
        QueueCommand::Pop {
            name,
            no_wait,
            visibility_timeout,
        } => {
            let queue = Queue::new(store.clone(), name)
                .map_err(|e| target.error(&e))?
                .visibility_timeout(*visibility_timeout);
            let delivery = if *no_wait {
                queue.try_pop().await.map_err(|e| target.error(&e))?
            } else {
                tokio::select! {
                    popped = queue.pop() => Some(popped.map_err(|e| target.error(&e))?),
                    signal = signals.next() => {
                        return Err(CliError::new(signal_code(signal as i32), String::new()))
                    }
                }
            };
            let Some(delivery) = delivery else {
                return Err(CliError::new(NOT_FOUND, format!("queue {name:?} is empty")));
            };
            let payload = delivery.payload().clone();
            let (seq, attempt) = (delivery.seq(), delivery.attempt());
            // Taken for good: a CLI pop hands the item to the shell.
            delivery.ack().await.map_err(|e| target.error(&e))?;
            if out.json {
                let mut pair = serde_json::Map::new();
                pair.insert("queue".into(), json!(name));
                pair.insert("seq".into(), json!(seq));
                pair.insert("attempt".into(), json!(attempt));
                let (value, encoding) = crate::output::encode(&payload);
                pair.insert("item".into(), json!(value));
                pair.insert("encoding".into(), json!(encoding));
                out.object(pair)
            } else {
                let mut bytes = payload.to_vec();
                bytes.push(b'\n');
                out.write(&bytes)
            }
        }
        QueueCommand::Len { name } => {
            let queue = Queue::new(store.clone(), name).map_err(|e| target.error(&e))?;
            let len = queue.len().await.map_err(|e| target.error(&e))?;
            if out.json {
                out.object(object(json!({ "queue": name, "len": len })))
            } else {
                out.line(&len.to_string())
            }
        }
    }
}

/// `members SERVICE`: the live instances, once or (`watch`) after every
/// change.
pub async fn members(
    store: &Arc<dyn Store>,
    target: &Target,
    out: Output,
    prefix: &str,
    service: &str,
    watch: bool,
    signals: &mut Signals,
) -> Result<(), CliError> {
    let discovery = Discovery::new(store.clone(), prefix);
    if !watch {
        let instances = discovery
            .instances(service)
            .await
            .map_err(|e| target.error(&e))?;
        return print_members(out, service, &instances);
    }
    let (mut sets, mut errors) = discovery
        .watch(service)
        .await
        .map_err(|e| target.error(&e))?;
    loop {
        tokio::select! {
            set = sets.next() => match set {
                Some(instances) => print_members(out, service, &instances)?,
                None => return Ok(()),
            },
            Some(error) = errors.next() => {
                if !error.is_transient() {
                    return Err(target.error(&error));
                }
                crate::warn(&target.scrub(&error.to_string()));
            }
            _ = signals.next() => return Ok(()),
        }
    }
}

fn print_members(out: Output, service: &str, instances: &[Instance]) -> Result<(), CliError> {
    if out.json {
        let list: Vec<serde_json::Value> = instances
            .iter()
            .map(|i| json!({ "id": i.id, "endpoint": i.endpoint, "metadata": i.metadata }))
            .collect();
        return out.object(object(json!({ "service": service, "instances": list })));
    }
    if instances.is_empty() {
        return out.line(&format!("(no instances of {service})"));
    }
    for instance in instances {
        let mut line = format!("{} {}", instance.id, instance.endpoint);
        for (key, value) in &instance.metadata {
            line.push_str(&format!(" {key}={value}"));
        }
        out.line(&line)?;
    }
    Ok(())
}

fn object(value: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    match value {
        serde_json::Value::Object(map) => map,
        _ => serde_json::Map::new(),
    }
}
