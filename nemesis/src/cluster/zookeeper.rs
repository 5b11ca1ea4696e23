//! A three-server ZooKeeper ensemble on loopback, every link behind a
//! [`Proxy`].
//!
//! * **Clients** reach member `i` through its client proxy
//!   ([`ZkEnsemble::client_proxy`], [`ZkEnsemble::url`]).
//! * **Peers**: each server's `zoo.cfg` lists the *other* servers at proxy
//!   addresses dedicated to the ordered pair (self → other), one proxy for
//!   the quorum port (leader ↔ follower traffic) and one for the election
//!   port. So [`ZkEnsemble::isolate`] cuts member `i` from both peers by
//!   setting the proxies of every pair involving `i`, while its clients stay
//!   connected: with [`Mode::Drop`] the server goes on answering its clients
//!   (pings included) until it notices the silence itself, after
//!   `syncLimit × tickTime`.
//!
//!   One path may bypass the proxies: when a server with a lower id opens an
//!   election connection to a higher one, ZooKeeper drops it and the higher
//!   server connects back, possibly to the address the lower one announced
//!   for itself (its real election port). Election traffic of a pair can
//!   then flow unproxied; the quorum links, which carry the leader's pings,
//!   proposals and session touches, always go through the proxies, so an
//!   isolated member still loses its leader or its followers.
//!
//! Timing: `tickTime` = [`TICK_TIME`] (200 ms), `initLimit` = `syncLimit` =
//! 20 ticks (4 s), sessions of 400 ms .. 60 s. Each server's data, config
//! and log are under `dir/zk<i>/` (`server.log`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::proxy::{Mode, Proxy};

/// Errors of the launcher.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The ensemble's `tickTime`.
pub const TICK_TIME: Duration = Duration::from_millis(200);
/// The ensemble's `syncLimit` (and `initLimit`), in ticks.
pub const SYNC_LIMIT: u32 = 20;
/// Number of servers.
const SERVERS: usize = 3;
/// How long `start` and `restart` wait for the ensemble to become healthy.
const START_WITHIN: Duration = Duration::from_secs(60);

/// Where the ZooKeeper server comes from.
#[derive(Clone, Debug)]
pub struct ZkBinaries {
    /// The `java` binary.
    pub java: PathBuf,
    /// The class path holding ZooKeeper and its dependencies.
    pub classpath: String,
    /// The main class (`org.apache.zookeeper.server.quorum.QuorumPeerMain`).
    pub main: String,
}

impl ZkBinaries {
    /// From `ANYKV_TEST_JAVA`, `ANYKV_TEST_ZK_CLASSPATH` and the optional
    /// `ANYKV_TEST_ZK_MAIN` (see `scripts/services.sh env`); `None` if unset.
    pub fn from_env() -> Option<ZkBinaries> {
        let java = std::env::var_os("ANYKV_TEST_JAVA")?;
        let classpath = std::env::var("ANYKV_TEST_ZK_CLASSPATH").ok()?;
        let main = std::env::var("ANYKV_TEST_ZK_MAIN")
            .unwrap_or_else(|_| "org.apache.zookeeper.server.quorum.QuorumPeerMain".into());
        Some(ZkBinaries {
            java: PathBuf::from(java),
            classpath,
            main,
        })
    }
}

/// One server: its real ports, its directory and its process.
#[derive(Debug)]
struct Member {
    dir: PathBuf,
    client_port: u16,
    quorum_port: u16,
    election_port: u16,
    child: Option<Child>,
}

/// The proxies member `from` uses to reach member `to`.
#[derive(Debug)]
struct PeerLink {
    from: usize,
    to: usize,
    quorum: Proxy,
    election: Proxy,
}

/// A running three-server ensemble; dropping it kills every server.
#[derive(Debug)]
pub struct ZkEnsemble {
    bin: ZkBinaries,
    members: Vec<Member>,
    clients: Vec<Proxy>,
    links: Vec<PeerLink>,
}

fn free_port() -> Result<u16, BoxError> {
    Ok(crate::ports::free_loopback_port()?)
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

impl ZkEnsemble {
    /// Starts the ensemble in `dir` (created) on free loopback ports and
    /// returns once every server is up with one leader (bounded wait; the
    /// error carries the log tails).
    pub async fn start(dir: &Path, bin: &ZkBinaries) -> Result<Self, BoxError> {
        std::fs::create_dir_all(dir)?;
        let mut members = Vec::with_capacity(SERVERS);
        for i in 0..SERVERS {
            let member_dir = dir.join(format!("zk{}", i + 1));
            std::fs::create_dir_all(member_dir.join("data"))?;
            std::fs::write(member_dir.join("data").join("myid"), format!("{}\n", i + 1))?;
            members.push(Member {
                dir: member_dir,
                client_port: free_port()?,
                quorum_port: free_port()?,
                election_port: free_port()?,
                child: None,
            });
        }
        let mut clients = Vec::with_capacity(SERVERS);
        for m in &members {
            clients.push(Proxy::start(loopback(m.client_port)).await?);
        }
        let mut links = Vec::new();
        for from in 0..SERVERS {
            for to in (0..SERVERS).filter(|&to| to != from) {
                links.push(PeerLink {
                    from,
                    to,
                    quorum: Proxy::start(loopback(members[to].quorum_port)).await?,
                    election: Proxy::start(loopback(members[to].election_port)).await?,
                });
            }
        }
        let mut ensemble = ZkEnsemble {
            bin: bin.clone(),
            members,
            clients,
            links,
        };
        for i in 0..SERVERS {
            ensemble.write_config(i)?;
        }
        for i in 0..SERVERS {
            ensemble.spawn(i)?;
        }
        ensemble.wait_healthy(START_WITHIN).await?;
        Ok(ensemble)
    }

    fn write_config(&self, i: usize) -> Result<(), BoxError> {
        let m = &self.members[i];
        let mut cfg = format!(
            "tickTime={tick}\ninitLimit={limit}\nsyncLimit={limit}\n\
             minSessionTimeout={min}\nmaxSessionTimeout=60000\n\
             dataDir={data}\nclientPort={client}\nclientPortAddress=127.0.0.1\n\
             maxClientCnxns=0\nadmin.enableServer=false\n4lw.commands.whitelist=*\n\
             reconfigEnabled=false\nstandaloneEnabled=false\n",
            tick = TICK_TIME.as_millis(),
            limit = SYNC_LIMIT,
            min = 2 * TICK_TIME.as_millis(),
            data = m.dir.join("data").display(),
            client = m.client_port,
        );
        for j in 0..SERVERS {
            let (quorum, election) = if j == i {
                (m.quorum_port, m.election_port)
            } else {
                let link = self.link(i, j);
                (link.quorum.addr().port(), link.election.addr().port())
            };
            cfg.push_str(&format!("server.{}=127.0.0.1:{quorum}:{election}\n", j + 1));
        }
        std::fs::write(m.dir.join("zoo.cfg"), cfg)?;
        Ok(())
    }

    fn link(&self, from: usize, to: usize) -> &PeerLink {
        // Every ordered pair of distinct members has a link (built in `start`).
        self.links
            .iter()
            .find(|l| l.from == from && l.to == to)
            .unwrap_or_else(|| unreachable!("no link {from} -> {to}"))
    }

    fn spawn(&mut self, i: usize) -> Result<(), BoxError> {
        let bin = &self.bin;
        let m = &mut self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(m.dir.join("server.log"))?;
        let child = Command::new(&bin.java)
            .arg("-Xmx192m")
            .arg("-XX:+UseSerialGC")
            .arg("-cp")
            .arg(&bin.classpath)
            .arg("-Dzookeeper.admin.enableServer=false")
            .arg("-Dzookeeper.4lw.commands.whitelist=*")
            .arg(format!("-Dzookeeper.log.dir={}", m.dir.display()))
            .arg(&bin.main)
            .arg(m.dir.join("zoo.cfg"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        m.child = Some(child);
        Ok(())
    }

    /// Number of fault targets (the three servers).
    pub fn members(&self) -> usize {
        SERVERS
    }

    /// `zk1`, `zk2`, `zk3`.
    pub fn name(&self, i: usize) -> String {
        format!("zk{}", i + 1)
    }

    /// The ensemble's `tickTime`; pass it to anykv as `tick_time` in the
    /// URL query so its locks know the ensemble's timing.
    pub fn tick_time(&self) -> Duration {
        TICK_TIME
    }

    /// A `zk://` URL reaching the ensemble only through member `i`'s client
    /// proxy; `query` (without `?`) is appended as given.
    pub fn url(&self, i: usize, namespace: &str, query: &str) -> String {
        let sep = if query.is_empty() { "" } else { "?" };
        format!("zk://{}/{namespace}{sep}{query}", self.clients[i].addr())
    }

    /// The proxy between member `i` and its clients.
    pub fn client_proxy(&self, i: usize) -> &Proxy {
        &self.clients[i]
    }

    /// Cuts member `i` from both peers (quorum and election links, both
    /// directions) with `mode`; its client proxy is left as it is.
    pub fn isolate(&self, i: usize, mode: Mode) {
        for link in self.links.iter().filter(|l| l.from == i || l.to == i) {
            link.quorum.set(mode);
            link.election.set(mode);
        }
    }

    /// Every peer link and every client proxy back to [`Mode::Pass`].
    pub fn heal(&self) {
        for link in &self.links {
            link.quorum.set(Mode::Pass);
            link.election.set(Mode::Pass);
        }
        for proxy in &self.clients {
            proxy.set(Mode::Pass);
        }
    }

    /// SIGKILLs member `i` and reaps it; `pid(i)` is `None` until `restart`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOPs member `i`.
    pub fn pause(&self, i: usize) {
        self.signal(i, Signal::SIGSTOP);
    }

    /// SIGCONTs member `i`.
    pub fn resume(&self, i: usize) {
        self.signal(i, Signal::SIGCONT);
    }

    fn signal(&self, i: usize, signal: Signal) {
        if let Some(pid) = self.pid(i).and_then(|p| i32::try_from(p).ok()) {
            if let Err(error) = kill(Pid::from_raw(pid), signal) {
                tracing::warn!(member = %self.name(i), %error, ?signal, "signal failed");
            }
        }
    }

    /// Starts member `i` again after a kill (same data, same ports) and
    /// waits until the ensemble is healthy.
    pub async fn restart(&mut self, i: usize) -> Result<(), BoxError> {
        if self.members[i].child.is_none() {
            self.spawn(i)?;
        }
        self.wait_healthy(START_WITHIN).await
    }

    /// The process id of member `i`, `None` while killed.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(Child::id)
    }

    /// Member `i`'s answer to `srvr`: `Some("leader" | "follower" | …)`,
    /// `None` if it does not serve (down, paused, electing).
    pub async fn mode(&self, i: usize) -> Option<String> {
        let answer = four_letter(self.members[i].client_port, "srvr").await?;
        answer
            .lines()
            .find_map(|l| l.strip_prefix("Mode: "))
            .map(|m| m.trim().to_owned())
    }

    /// The member that is leader now, if exactly one says so.
    pub async fn leader(&self) -> Option<usize> {
        let mut leaders = Vec::new();
        for i in 0..SERVERS {
            if self.mode(i).await.as_deref() == Some("leader") {
                leaders.push(i);
            }
        }
        match leaders[..] {
            [one] => Some(one),
            _ => None,
        }
    }

    /// Waits (at most `within`) until every member serves, one as leader
    /// and the others as followers.
    pub async fn wait_healthy(&self, within: Duration) -> Result<(), BoxError> {
        let start = tokio::time::Instant::now();
        let mut last = Vec::new();
        while start.elapsed() < within {
            last.clear();
            for i in 0..SERVERS {
                last.push(self.mode(i).await);
            }
            let leaders = last
                .iter()
                .filter(|m| m.as_deref() == Some("leader"))
                .count();
            let followers = last
                .iter()
                .filter(|m| m.as_deref() == Some("follower"))
                .count();
            if leaders == 1 && followers == SERVERS - 1 {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let mut report =
            format!("ZooKeeper ensemble not healthy within {within:?}: modes {last:?}");
        for (i, m) in self.members.iter().enumerate() {
            let log = std::fs::read_to_string(m.dir.join("server.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            report.push_str(&format!("\n--- {} log tail ---\n", self.name(i)));
            for line in tail.into_iter().rev() {
                report.push_str(line);
                report.push('\n');
            }
        }
        Err(report.into())
    }
}

impl Drop for ZkEnsemble {
    fn drop(&mut self) {
        for i in 0..SERVERS {
            self.kill(i);
        }
    }
}

/// Sends a four-letter word to a server's real client port (bounded: 2 s).
async fn four_letter(port: u16, word: &str) -> Option<String> {
    let ask = async {
        let mut conn = TcpStream::connect(loopback(port)).await.ok()?;
        conn.write_all(word.as_bytes()).await.ok()?;
        let mut answer = String::new();
        conn.read_to_string(&mut answer).await.ok()?;
        Some(answer)
    };
    tokio::time::timeout(Duration::from_secs(2), ask)
        .await
        .ok()
        .flatten()
}
