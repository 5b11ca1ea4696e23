//! A fault-injecting TCP proxy on loopback.
//!
//! A [`Proxy`] listens on one loopback address and forwards every
//! connection to one loopback upstream. Its [`Mode`] can be changed at any
//! time and applies at once to the connections already open, in both
//! directions:
//!
//! * [`Mode::Pass`] forwards bytes as they come.
//! * [`Mode::Delay`] holds every chunk back for a fixed time before
//!   forwarding it.
//! * [`Mode::Drop`] is the silent partition: connections stay open (and
//!   new ones are accepted), but nothing arrives on either side, as if every
//!   packet were lost. Bytes already sent stay queued; on a return to `Pass`
//!   they flow again, as TCP's retransmissions would deliver them after a
//!   heal. Peers notice only through their own timeouts.
//! * [`Mode::Reset`] is the loud partition: every open connection is reset
//!   (closed with a zero linger, so the peers see RST) and new connections
//!   are closed as soon as they are accepted.
//!
//! Only loopback addresses are accepted, for the listener and the upstream:
//! a proxy can never be pointed at another host. Every task the proxy
//! starts stops when the [`Proxy`] is dropped.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What the proxy does with traffic; see the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Forward everything.
    Pass,
    /// Forward everything after this delay.
    Delay(Duration),
    /// Keep connections open, deliver nothing (silent partition).
    Drop,
    /// Reset every connection, refuse new ones (loud partition).
    Reset,
}

/// A running proxy; dropping it stops the listener and every connection.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    mode: watch::Sender<Mode>,
    stop: CancellationToken,
    tasks: TaskTracker,
    stats: Arc<Stats>,
}

#[derive(Debug, Default)]
struct Stats {
    connections: AtomicU64,
    bytes: AtomicU64,
}

fn loopback_only(addr: SocketAddr, what: &str) -> io::Result<()> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} {addr} is not a loopback address: the proxy only works on 127.0.0.0/8"),
        ))
    }
}

impl Proxy {
    /// Starts a proxy on a free port of 127.0.0.1 in front of `upstream`.
    pub async fn start(upstream: SocketAddr) -> io::Result<Proxy> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), upstream).await
    }

    /// Starts a proxy listening on `listen` (port 0 picks a free one) in
    /// front of `upstream`. Both must be loopback addresses.
    pub async fn start_on(listen: SocketAddr, upstream: SocketAddr) -> io::Result<Proxy> {
        loopback_only(listen, "listen address")?;
        loopback_only(upstream, "upstream address")?;
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let (mode, _) = watch::channel(Mode::Pass);
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let stats = Arc::new(Stats::default());
        tasks.spawn(accept_loop(
            listener,
            upstream,
            mode.subscribe(),
            stop.clone(),
            tasks.clone(),
            stats.clone(),
        ));
        Ok(Proxy {
            addr,
            upstream,
            mode,
            stop,
            tasks,
            stats,
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address traffic is forwarded to.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Changes the mode; applies to open connections at once.
    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        *self.mode.borrow()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.stats.connections.load(Ordering::Relaxed)
    }

    /// Bytes forwarded so far (both directions).
    pub fn bytes(&self) -> u64 {
        self.stats.bytes.load(Ordering::Relaxed)
    }

    /// Stops the proxy and waits until every one of its tasks has ended.
    pub async fn shutdown(self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.tasks.close();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    mode: watch::Receiver<Mode>,
    stop: CancellationToken,
    tasks: TaskTracker,
    stats: Arc<Stats>,
) {
    loop {
        let accepted = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let client = match accepted {
            Ok((client, _)) => client,
            Err(error) => {
                tracing::debug!(%error, "proxy accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        stats.connections.fetch_add(1, Ordering::Relaxed);
        tasks.spawn(connection(
            client,
            upstream,
            mode.clone(),
            stop.child_token(),
            stats.clone(),
        ));
    }
}

/// Waits until the mode is not `Drop` and returns it; `Reset` once `stop`
/// is cancelled (the proxy stops, or the other direction was reset).
async fn passable(mode: &mut watch::Receiver<Mode>, stop: &CancellationToken) -> Mode {
    loop {
        if stop.is_cancelled() {
            return Mode::Reset;
        }
        let now = *mode.borrow_and_update();
        if now != Mode::Drop {
            return now;
        }
        tokio::select! {
            biased;
            () = stop.cancelled() => return Mode::Reset,
            changed = mode.changed() => if changed.is_err() { return Mode::Reset },
        }
    }
}

fn reset(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}

async fn connection(
    client: TcpStream,
    upstream: SocketAddr,
    mut mode: watch::Receiver<Mode>,
    stop: CancellationToken,
    stats: Arc<Stats>,
) {
    // A new connection in Drop mode is held open, unconnected, until the
    // partition heals.
    if passable(&mut mode, &stop).await == Mode::Reset {
        return reset(&client);
    }
    let server = tokio::select! {
        biased;
        () = stop.cancelled() => return,
        server = TcpStream::connect(upstream) => match server {
            Ok(server) => server,
            Err(error) => {
                tracing::debug!(%error, %upstream, "proxy could not reach its upstream");
                return reset(&client);
            }
        },
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let done = stop.child_token();
    let up = pump(
        client_read,
        server_write,
        mode.clone(),
        done.clone(),
        stats.clone(),
    );
    let down = pump(server_read, client_write, mode, done.clone(), stats);
    let (a, b) = tokio::join!(up, down);
    // A reset on either side resets both.
    if let (Some((r1, w1)), Some((r2, w2))) = (a, b) {
        if let (Ok(c), Ok(s)) = (r1.reunite(w2), r2.reunite(w1)) {
            reset(&c);
            reset(&s);
        }
    }
}

/// Forwards one direction. Returns the halves if the connection is to be
/// reset (so the caller can reset both sockets), `None` after a clean end.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
    done: CancellationToken,
    stats: Arc<Stats>,
) -> Option<(OwnedReadHalf, OwnedWriteHalf)> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // In Drop mode, do not even read: bytes stay queued in the kernel
        // and the sender eventually blocks, as on a lossy link.
        if passable(&mut mode, &done).await == Mode::Reset {
            done.cancel();
            return Some((from, to));
        }
        let read = tokio::select! {
            biased;
            () = done.cancelled() => return Some((from, to)),
            changed = mode.changed() => {
                if changed.is_err() {
                    done.cancel();
                    return Some((from, to));
                }
                continue;
            }
            read = from.read(&mut buf) => read,
        };
        let n = match read {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return None;
            }
            Ok(n) => n,
        };
        // What was read is delivered under the mode in force now.
        match passable(&mut mode, &done).await {
            Mode::Reset => {
                done.cancel();
                return Some((from, to));
            }
            Mode::Delay(d) => {
                tokio::select! {
                    biased;
                    () = done.cancelled() => return Some((from, to)),
                    () = tokio::time::sleep(d) => {}
                }
            }
            Mode::Pass | Mode::Drop => {}
        }
        if to.write_all(&buf[..n]).await.is_err() {
            done.cancel();
            return None;
        }
        stats.bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        (addr, task)
    }

    async fn roundtrip(
        stream: &mut TcpStream,
        msg: &[u8],
        within: Duration,
    ) -> io::Result<Vec<u8>> {
        stream.write_all(msg).await?;
        let mut got = vec![0u8; msg.len()];
        tokio::time::timeout(within, stream.read_exact(&mut got))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer"))??;
        Ok(got)
    }

    #[tokio::test]
    async fn refuses_non_loopback_addresses() {
        let err = Proxy::start(SocketAddr::from(([10, 0, 0, 1], 80)))
            .await
            .expect_err("not loopback");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[tokio::test]
    async fn pass_drop_heal_and_reset() {
        let (echo, _server) = echo_server().await;
        let proxy = Proxy::start(echo).await.expect("proxy");
        let mut c = TcpStream::connect(proxy.addr()).await.expect("connect");
        let short = Duration::from_millis(300);
        assert_eq!(
            roundtrip(&mut c, b"one", short).await.expect("pass"),
            b"one"
        );

        // Silent: nothing arrives, the connection stays open.
        proxy.set(Mode::Drop);
        let err = roundtrip(&mut c, b"two", short).await.expect_err("dropped");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        // Healed: the held bytes arrive, in order.
        proxy.set(Mode::Pass);
        let mut got = [0u8; 3];
        tokio::time::timeout(Duration::from_secs(2), c.read_exact(&mut got))
            .await
            .expect("after heal")
            .expect("read");
        assert_eq!(&got, b"two");

        // Delay.
        proxy.set(Mode::Delay(Duration::from_millis(200)));
        let t = std::time::Instant::now();
        roundtrip(&mut c, b"dly", Duration::from_secs(2))
            .await
            .expect("delayed");
        assert!(
            t.elapsed() >= Duration::from_millis(380),
            "{:?}",
            t.elapsed()
        );

        // Loud: the open connection is reset, new ones are closed.
        proxy.set(Mode::Reset);
        let mut buf = [0u8; 1];
        let r = tokio::time::timeout(Duration::from_secs(2), c.read(&mut buf))
            .await
            .expect("reset is prompt");
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
        let mut c2 = TcpStream::connect(proxy.addr())
            .await
            .expect("accepts, then closes");
        let r = tokio::time::timeout(Duration::from_secs(2), c2.read(&mut buf))
            .await
            .expect("closed at once");
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");

        proxy.set(Mode::Pass);
        let mut c3 = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert_eq!(
            roundtrip(&mut c3, b"end", short).await.expect("pass again"),
            b"end"
        );
        assert!(proxy.connections() >= 3);
        proxy.shutdown().await;
    }
}
