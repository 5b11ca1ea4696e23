//! A loopback TCP proxy that can cut the link to the server behind it, hold
//! back the server's replies for a while, or hold back requests that
//! contain given bytes.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// How long a connection whose client has gone stays open to the server,
/// so that a request delivered late is still read and answered.
const LINGER: Duration = Duration::from_secs(2);

/// Forwards connections to a loopback port.
///
/// * While cut, every open connection is closed and new ones are closed as
///   soon as they are accepted.
/// * While replies are held, what the server sends waits in the proxy
///   (requests still reach the server) and is delivered, in order, once
///   they are let through.
/// * While requests containing some bytes are held, a chunk a client sends
///   that contains them waits in the proxy (with what that connection sends
///   after it) until they are let through; if the client has hung up
///   meanwhile, the chunk still reaches the server, which then sees a
///   request whose client is gone.
///
/// Cut for good when dropped.
pub struct CutProxy {
    addr: SocketAddr,
    cut: watch::Sender<bool>,
    hold: watch::Sender<bool>,
    hold_requests: watch::Sender<Option<Vec<u8>>>,
    accept: tokio::task::JoinHandle<()>,
}

fn contains(chunk: &[u8], pattern: &[u8]) -> bool {
    !pattern.is_empty() && chunk.windows(pattern.len()).any(|w| w == pattern)
}

impl CutProxy {
    /// A proxy on a free loopback port in front of `127.0.0.1:upstream`.
    pub async fn start(upstream: u16) -> std::io::Result<CutProxy> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (cut, cut_rx) = watch::channel(false);
        let (hold, hold_rx) = watch::channel(false);
        let (hold_requests, requests_rx) = watch::channel(None::<Vec<u8>>);
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let mut cut = cut_rx.clone();
                if *cut.borrow() {
                    continue; // dropped: closed at once
                }
                let mut hold = hold_rx.clone();
                let mut requests = requests_rx.clone();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    else {
                        return;
                    };
                    let (mut from_client, mut to_client) = client.into_split();
                    let (mut from_server, mut to_server) = server.into_split();
                    let down = tokio::spawn(async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = from_server.read(&mut buf).await?;
                            if n == 0 {
                                return Ok::<_, std::io::Error>(());
                            }
                            if hold.wait_for(|held| !*held).await.is_err() {
                                return Ok(());
                            }
                            to_client.write_all(&buf[..n]).await?;
                        }
                    });
                    let stop_down = down.abort_handle();
                    let up = async {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = from_client.read(&mut buf).await?;
                            if n == 0 {
                                return Ok::<_, std::io::Error>(());
                            }
                            let chunk = &buf[..n];
                            let held = |p: &Option<Vec<u8>>| {
                                p.as_ref().is_some_and(|p| contains(chunk, p))
                            };
                            if requests.wait_for(|p| !held(p)).await.is_err() {
                                return Ok(());
                            }
                            to_server.write_all(chunk).await?;
                        }
                    };
                    tokio::select! {
                        _ = async {
                            let _ = up.await;
                            // The client is done: let the server answer.
                            let _ = tokio::time::timeout(LINGER, down).await;
                        } => {}
                        _ = cut.wait_for(|cut| *cut) => {}
                    }
                    stop_down.abort();
                });
            }
        });
        Ok(CutProxy {
            addr,
            cut,
            hold,
            hold_requests,
            accept,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cuts the link (`true`) or lets connections through again (`false`).
    pub fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }

    /// Holds back the server's replies (`true`) or delivers them, the held
    /// ones first (`false`).
    pub fn set_hold_replies(&self, hold: bool) {
        self.hold.send_replace(hold);
    }

    /// Holds back every request chunk that contains `pattern` (`Some`), or
    /// lets the held ones through (`None`).
    pub fn set_hold_requests_containing(&self, pattern: Option<&[u8]>) {
        self.hold_requests.send_replace(pattern.map(<[u8]>::to_vec));
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.set_cut(true);
        self.accept.abort();
    }
}
