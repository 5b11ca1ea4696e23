//! The fenced resource: a tiny line protocol server on loopback that
//! accepts a write only if its fencing token is at least the highest it has
//! accepted, and records every verdict as an [`Event::Write`].

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::history::{now, Event};

/// The running resource; dropping it stops it.
#[derive(Debug)]
pub struct FencedResource {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

#[derive(Debug, Default)]
struct State {
    highest: Option<u64>,
    events: Vec<Event>,
}

impl FencedResource {
    /// Starts it on a free port of 127.0.0.1.
    pub async fn start() -> std::io::Result<FencedResource> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state: Arc<Mutex<State>> = Arc::default();
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let (s, st, t) = (state.clone(), stop.clone(), tasks.clone());
        tasks.spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = st.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((stream, _)) = accepted else { continue };
                let (s, st) = (s.clone(), st.clone());
                t.spawn(async move {
                    let (r, mut w) = stream.into_split();
                    let mut lines = BufReader::new(r).lines();
                    loop {
                        let line = tokio::select! {
                            () = st.cancelled() => return,
                            l = lines.next_line() => l,
                        };
                        let Ok(Some(line)) = line else { return };
                        let mut parts = line.split_whitespace();
                        let (Some("W"), Some(node), Some(token)) =
                            (parts.next(), parts.next(), parts.next())
                        else {
                            return;
                        };
                        let Ok(token) = token.parse::<u64>() else {
                            return;
                        };
                        let sent = parts.next().and_then(|t| t.parse().ok()).unwrap_or(0);
                        let accepted = decide(&s, node, token, sent);
                        let answer: &[u8] = if accepted { b"1\n" } else { b"0\n" };
                        if w.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Ok(FencedResource {
            addr,
            state,
            stop,
            tasks,
        })
    }

    /// Where writers connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The verdicts so far.
    pub fn events(&self) -> Vec<Event> {
        self.state
            .lock()
            .map(|s| s.events.clone())
            .unwrap_or_default()
    }
}

fn decide(state: &Mutex<State>, node: &str, token: u64, sent: u64) -> bool {
    let Ok(mut s) = state.lock() else {
        return false;
    };
    let accepted = s.highest.is_none_or(|h| token >= h);
    if accepted {
        s.highest = Some(token);
    }
    let t = now();
    s.events.push(Event::Write {
        node: node.to_string(),
        token,
        t,
        accepted,
        sent,
    });
    accepted
}

impl Drop for FencedResource {
    fn drop(&mut self) {
        self.stop.cancel();
        self.tasks.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::Resource;

    #[tokio::test]
    async fn refuses_tokens_older_than_the_newest_accepted() {
        let resource = FencedResource::start().await.expect("start");
        let mut a = Resource::connect(resource.addr()).await.expect("a");
        let mut b = Resource::connect(resource.addr()).await.expect("b");
        assert!(a.write("a", 5).await.expect("write"));
        assert!(a.write("a", 5).await.expect("write"));
        assert!(b.write("b", 7).await.expect("write"));
        assert!(!a.write("a", 5).await.expect("write"));
        let verdicts: Vec<bool> = resource
            .events()
            .iter()
            .map(|e| matches!(e, Event::Write { accepted: true, .. }))
            .collect();
        assert_eq!(verdicts, vec![true, true, true, false]);
    }
}
