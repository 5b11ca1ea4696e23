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
//! A proxy may also tell its connections apart by where they come from: a
//! [`Classifier`] given at start names each accepted connection's source
//! (for example, which cluster member's process owns the connecting
//! socket, see [`owner_of_connection`]), and [`Proxy::set_for`] sets the
//! mode of one source's connections only. That is how one member's links
//! to its peers are cut while the peers still talk to each other.
//!
//! Only loopback addresses are accepted, for the listener and the upstream:
//! a proxy can never be pointed at another host. Every task the proxy
//! starts stops when the [`Proxy`] is dropped.

use std::collections::HashMap;
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

/// Names the source of an accepted connection from its peer address
/// (`None`: unknown, only the proxy-wide mode applies).
pub type Classifier = Arc<dyn Fn(SocketAddr) -> Option<String> + Send + Sync>;

/// The proxy-wide mode and the per-source ones.
#[derive(Clone, Debug)]
struct Modes {
    all: Mode,
    by_source: HashMap<String, Mode>,
}

impl Modes {
    /// The mode for a connection from `source`: the more severe of the
    /// proxy-wide one and the source's own.
    fn of(&self, source: Option<&str>) -> Mode {
        let own = source.and_then(|s| self.by_source.get(s)).copied();
        match own {
            None => self.all,
            Some(own) => severest(self.all, own),
        }
    }
}

fn severity(mode: Mode) -> u8 {
    match mode {
        Mode::Pass => 0,
        Mode::Delay(_) => 1,
        Mode::Drop => 2,
        Mode::Reset => 3,
    }
}

fn severest(a: Mode, b: Mode) -> Mode {
    if severity(b) > severity(a) {
        b
    } else {
        a
    }
}

/// A running proxy; dropping it stops the listener and every connection.
pub struct Proxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    mode: watch::Sender<Modes>,
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
        Self::start_classified(listen, upstream, None).await
    }

    /// Like [`Proxy::start_on`], naming each connection's source with
    /// `classifier` so that [`Proxy::set_for`] can address it.
    pub async fn start_classified(
        listen: SocketAddr,
        upstream: SocketAddr,
        classifier: Option<Classifier>,
    ) -> io::Result<Proxy> {
        loopback_only(listen, "listen address")?;
        loopback_only(upstream, "upstream address")?;
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let (mode, _) = watch::channel(Modes {
            all: Mode::Pass,
            by_source: HashMap::new(),
        });
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let stats = Arc::new(Stats::default());
        tasks.spawn(accept_loop(
            listener,
            upstream,
            classifier,
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

    /// Changes the proxy-wide mode; applies to open connections at once.
    pub fn set(&self, mode: Mode) {
        self.mode.send_modify(|m| m.all = mode);
    }

    /// Sets the mode of the connections from `source` (as named by the
    /// classifier); the more severe of it and the proxy-wide mode applies.
    pub fn set_for(&self, source: &str, mode: Mode) {
        self.mode.send_modify(|m| {
            if mode == Mode::Pass {
                m.by_source.remove(source);
            } else {
                m.by_source.insert(source.to_string(), mode);
            }
        });
    }

    /// Back to `Pass` for everyone.
    pub fn heal(&self) {
        self.mode.send_modify(|m| {
            m.all = Mode::Pass;
            m.by_source.clear();
        });
    }

    /// The current proxy-wide mode.
    pub fn mode(&self) -> Mode {
        self.mode.borrow().all
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

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("addr", &self.addr)
            .field("upstream", &self.upstream)
            .field("modes", &*self.mode.borrow())
            .finish()
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
    classifier: Option<Classifier>,
    mode: watch::Receiver<Modes>,
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
        let (client, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::debug!(%error, "proxy accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        stats.connections.fetch_add(1, Ordering::Relaxed);
        let source = classifier.as_ref().and_then(|c| c(peer));
        tasks.spawn(connection(
            client,
            upstream,
            Source {
                modes: mode.clone(),
                name: source,
            },
            stop.child_token(),
            stats.clone(),
        ));
    }
}

/// One connection's view of the modes.
#[derive(Clone)]
struct Source {
    modes: watch::Receiver<Modes>,
    name: Option<String>,
}

impl Source {
    fn changed(
        &mut self,
    ) -> impl std::future::Future<Output = Result<(), watch::error::RecvError>> + '_ {
        self.modes.changed()
    }
}

/// Waits until the mode is not `Drop` and returns it; `Reset` once `stop`
/// is cancelled (the proxy stops, or the other direction was reset).
async fn passable(mode: &mut Source, stop: &CancellationToken) -> Mode {
    loop {
        if stop.is_cancelled() {
            return Mode::Reset;
        }
        let now = mode.modes.borrow_and_update().of(mode.name.as_deref());
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
    mut mode: Source,
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
    mut mode: Source,
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

/// Which of `pids` owns the socket that connected from `peer` (a local
/// 127.0.0.1 port) — for a [`Classifier`] that names cluster members by
/// their process. Reads `/proc/net/tcp` for the socket's inode, then the
/// processes' fd tables. `None` if it cannot tell.
pub fn owner_of_connection(peer: SocketAddr, pids: &[(String, u32)]) -> Option<String> {
    let SocketAddr::V4(v4) = peer else {
        return None;
    };
    let ip = u32::from(*v4.ip()).swap_bytes();
    let wanted = format!("{:08X}:{:04X}", ip, v4.port());
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let inode = table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(1) == Some(&wanted.as_str()))
            .then(|| fields.get(9).map(|s| s.to_string()))
            .flatten()
    })?;
    let link = format!("socket:[{inode}]");
    pids.iter().find_map(|(name, pid)| {
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
        fds.flatten()
            .any(|fd| {
                std::fs::read_link(fd.path()).is_ok_and(|target| target.to_string_lossy() == link)
            })
            .then(|| name.clone())
    })
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

    #[tokio::test]
    async fn a_source_can_be_cut_alone() {
        let (echo, _server) = echo_server().await;
        let me = vec![("me".to_string(), std::process::id())];
        let classifier: Classifier = Arc::new(move |peer| owner_of_connection(peer, &me));
        let proxy = Proxy::start_classified(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            echo,
            Some(classifier),
        )
        .await
        .expect("proxy");
        let short = Duration::from_millis(300);
        let mut c = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert_eq!(
            roundtrip(&mut c, b"one", short).await.expect("pass"),
            b"one"
        );
        // Another source's cut does not touch this connection; its own does.
        proxy.set_for("someone-else", Mode::Drop);
        assert_eq!(
            roundtrip(&mut c, b"two", short).await.expect("pass"),
            b"two"
        );
        proxy.set_for("me", Mode::Drop);
        let err = roundtrip(&mut c, b"3rd", short).await.expect_err("cut");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        proxy.heal();
        let mut got = [0u8; 3];
        tokio::time::timeout(Duration::from_secs(2), c.read_exact(&mut got))
            .await
            .expect("after heal")
            .expect("read");
        assert_eq!(&got, b"3rd");
    }
}
