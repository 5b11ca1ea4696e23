//! A loopback TCP proxy that can cut the link to the server behind it, or
//! hold back the server's replies for a while.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// Forwards connections to a loopback port. While cut, every open
/// connection is closed and new ones are closed as soon as they are
/// accepted. While replies are held, what the server sends waits in the
/// proxy (requests still reach the server) and is delivered, in order,
/// once they are let through. Cut for good when dropped.
pub struct CutProxy {
    addr: SocketAddr,
    cut: watch::Sender<bool>,
    hold: watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
}

impl CutProxy {
    /// A proxy on a free loopback port in front of `127.0.0.1:upstream`.
    pub async fn start(upstream: u16) -> std::io::Result<CutProxy> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (cut, cut_rx) = watch::channel(false);
        let (hold, hold_rx) = watch::channel(false);
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let mut cut = cut_rx.clone();
                if *cut.borrow() {
                    continue; // dropped: closed at once
                }
                let mut hold = hold_rx.clone();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    else {
                        return;
                    };
                    let (mut from_client, mut to_client) = client.into_split();
                    let (mut from_server, mut to_server) = server.into_split();
                    let up = tokio::io::copy(&mut from_client, &mut to_server);
                    let down = async {
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
                    };
                    tokio::select! {
                        _ = up => {}
                        _ = down => {}
                        _ = cut.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        Ok(CutProxy {
            addr,
            cut,
            hold,
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
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.set_cut(true);
        self.accept.abort();
    }
}
