//! A single Redis primary on loopback, with persistence on
//! (`appendonly yes`, `appendfsync always`), so that a restart keeps its
//! data; [`RedisServer::restart_empty`] is the restart that loses it
//! (no persistence, or lost AOF).
//!
//! Redis has no peers here (anykv supports a single server, no Cluster or
//! Sentinel), so there is no minority partition: the faults are the
//! server's process faults and cutting its clients.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::process::{free_ports, log_tail, loopback, BoxError, Server};
use crate::proxy::{Mode, Proxy};

/// Where the Redis binary is.
#[derive(Clone, Debug)]
pub struct RedisBinaries {
    /// The `redis-server` binary.
    pub server: PathBuf,
}

impl RedisBinaries {
    /// From `ANYKV_TEST_REDIS_BIN` (`scripts/services.sh env`).
    pub fn from_env() -> Option<RedisBinaries> {
        let server = PathBuf::from(std::env::var_os("ANYKV_TEST_REDIS_BIN")?);
        server.exists().then_some(RedisBinaries { server })
    }
}

/// A running Redis server; dropping it kills it.
#[derive(Debug)]
pub struct RedisServer {
    bin: RedisBinaries,
    port: u16,
    client_proxy: Proxy,
    server: Option<Server>,
    data: PathBuf,
    log: PathBuf,
}

impl RedisServer {
    /// Starts the server in `dir` on a free loopback port.
    pub async fn start(dir: &Path, bin: &RedisBinaries) -> Result<RedisServer, BoxError> {
        std::fs::create_dir_all(dir)?;
        let port = free_ports(1)?[0];
        let data = dir.join("redis.data");
        let _ = std::fs::remove_dir_all(&data);
        std::fs::create_dir_all(&data)?;
        let mut server = RedisServer {
            bin: bin.clone(),
            port,
            client_proxy: Proxy::start(loopback(port)).await?,
            server: None,
            data,
            log: dir.join("redis.log"),
        };
        server.spawn()?;
        server.wait_healthy(Duration::from_secs(30)).await?;
        Ok(server)
    }

    fn spawn(&mut self) -> Result<(), BoxError> {
        let mut command = Command::new(&self.bin.server);
        command
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--dir")
            .arg(&self.data)
            .arg("--save")
            .arg("")
            .arg("--appendonly")
            .arg("yes")
            .arg("--appendfsync")
            .arg("always")
            .arg("--protected-mode")
            .arg("no")
            .arg("--daemonize")
            .arg("no");
        self.server = Some(Server::spawn(command, &self.log)?);
        Ok(())
    }

    /// Always 1.
    pub fn members(&self) -> usize {
        1
    }

    /// "redis".
    pub fn name(&self, _i: usize) -> String {
        "redis".into()
    }

    /// An anykv URL through the client proxy.
    pub fn url(&self, _i: usize, namespace: &str, query: &str) -> String {
        let q = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        format!("redis://{}/{namespace}{q}", self.client_proxy.addr())
    }

    /// The client proxy.
    pub fn client_proxy(&self, _i: usize) -> &Proxy {
        &self.client_proxy
    }

    /// No peers: only the clients can be cut (through the client proxy).
    pub fn isolate(&self, _i: usize, mode: Mode) {
        self.client_proxy.set(mode);
    }

    /// The client proxy back to `Pass`.
    pub fn heal(&self) {
        self.client_proxy.heal();
    }

    /// SIGKILL.
    pub fn kill(&mut self, _i: usize) {
        if let Some(mut s) = self.server.take() {
            s.kill();
        }
    }

    /// SIGSTOP.
    pub fn pause(&self, _i: usize) {
        if let Some(s) = &self.server {
            s.pause();
        }
    }

    /// SIGCONT.
    pub fn resume(&self, _i: usize) {
        if let Some(s) = &self.server {
            s.resume();
        }
    }

    /// Starts again on the same data (the AOF brings every key back).
    pub async fn restart(&mut self, i: usize) -> Result<(), BoxError> {
        self.kill(i);
        self.spawn()?;
        self.wait_healthy(Duration::from_secs(30)).await
    }

    /// Starts again with no data: what a restart without persistence (or
    /// with its AOF lost) does.
    pub async fn restart_empty(&mut self) -> Result<(), BoxError> {
        self.kill(0);
        let _ = std::fs::remove_dir_all(&self.data);
        std::fs::create_dir_all(&self.data)?;
        self.spawn()?;
        self.wait_healthy(Duration::from_secs(30)).await
    }

    /// The pid while it runs.
    pub fn pid(&self, _i: usize) -> Option<u32> {
        self.server.as_ref().and_then(Server::pid)
    }

    /// Waits until the server answers PING.
    pub async fn wait_healthy(&self, within: Duration) -> Result<(), BoxError> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let start = Instant::now();
        loop {
            let ping = async {
                let mut s = tokio::net::TcpStream::connect(loopback(self.port))
                    .await
                    .ok()?;
                s.write_all(b"PING\r\n").await.ok()?;
                let mut buf = [0u8; 7];
                s.read_exact(&mut buf).await.ok()?;
                (&buf == b"+PONG\r\n").then_some(())
            };
            if tokio::time::timeout(Duration::from_secs(1), ping)
                .await
                .ok()
                .flatten()
                .is_some()
            {
                return Ok(());
            }
            if start.elapsed() > within {
                return Err(format!(
                    "redis not answering after {within:?}:\n{}",
                    log_tail(&self.log, 15)
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
