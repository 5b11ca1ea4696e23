//! A real Consul cluster on loopback: three servers and two client agents,
//! each a child process on free ports of 127.0.0.1, with its data, config
//! and log under one directory.
//!
//! Members 0–2 are the servers (`consul-server1..3`), members 3 and 4 the
//! client agents (`consul-agent1`, `consul-agent2`). Every member has a
//! client [`Proxy`] in front of its HTTP port; [`ConsulCluster::url`]
//! points there.
//!
//! # What `isolate` cuts
//!
//! Consul members talk over two channels: server RPC (TCP, which also
//! carries Raft) and Serf gossip (UDP and TCP on the Serf LAN port). A TCP
//! proxy cannot carry or cut UDP, and a proxy cannot tell which peer a
//! connection comes from, so a per-pair cut as in ZooKeeper is impossible.
//! What is possible, and what this module does:
//!
//! * Each server binds its RPC port on an address of its own
//!   (127.0.0.11–13) and advertises 127.0.0.1 with the same port number,
//!   where a proxy in front of the real RPC port listens (Consul 1.8 has no
//!   separate advertised RPC port; gossip and HTTP stay on 127.0.0.1). So every connection *to* server
//!   `i`'s RPC port — Raft replication and votes from the other servers,
//!   RPCs forwarded by the other servers and by the client agents — goes
//!   through that proxy. `isolate(i, mode)` on a server sets it: nobody
//!   can reach server `i`'s RPC port any more. Connections server `i`
//!   opens itself (to the other servers' proxies) are not cut, and gossip
//!   is not cut, so the others still see it alive in `members`. A follower
//!   isolated so stops receiving Raft entries (it falls behind; its own
//!   clients' requests, forwarded outward to the leader, still work); an
//!   isolated leader keeps replicating outward but no other member can
//!   forward a request to it.
//! * A client agent has no RPC port anyone connects to: `isolate` on an
//!   agent cuts its client proxy instead (its clients are cut from it,
//!   the agent itself stays in the cluster). That is the same fault as
//!   `client_proxy(i).set(mode)`.
//!
//! `heal()` sets every proxy (RPC and client) back to [`Mode::Pass`].

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::proxy::{Mode, Proxy};

/// The error type of the cluster launchers.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Servers in the cluster.
const SERVERS: usize = 3;
/// Client agents in the cluster.
const AGENTS: usize = 2;
/// Bound on waiting for the cluster to start.
const START_WITHIN: Duration = Duration::from_secs(60);

/// Where the Consul binary is.
#[derive(Debug, Clone)]
pub struct ConsulBinaries {
    /// The `consul` executable.
    pub consul: PathBuf,
}

impl ConsulBinaries {
    /// From `ANYKV_TEST_CONSUL_BIN` (set by `scripts/services.sh env`);
    /// `None` when it is not set.
    pub fn from_env() -> Option<ConsulBinaries> {
        std::env::var_os("ANYKV_TEST_CONSUL_BIN").map(|consul| ConsulBinaries {
            consul: consul.into(),
        })
    }
}

/// One member: a server or a client agent.
struct Member {
    name: String,
    dir: PathBuf,
    http: u16,
    client_proxy: Proxy,
    /// Servers only: the proxy every peer reaches this server's RPC port by.
    rpc_proxy: Option<Proxy>,
    child: Option<Child>,
}

/// A running Consul cluster of three servers and two client agents; every
/// process is SIGKILLed when it is dropped (the directory stays, for the logs).
pub struct ConsulCluster {
    bin: PathBuf,
    members: Vec<Member>,
}

impl std::fmt::Debug for ConsulCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulCluster")
            .field("members", &self.members.len())
            .finish_non_exhaustive()
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

impl ConsulCluster {
    /// Starts the cluster in `dir` (created) on free loopback ports; returns
    /// once every member is up, the servers have a leader and every node is
    /// registered (bounded; the error carries the log tails).
    pub async fn start(dir: &Path, bin: &ConsulBinaries) -> Result<Self, BoxError> {
        std::fs::create_dir_all(dir)?;
        let n = SERVERS + AGENTS;
        // http, server RPC, serf LAN, serf WAN per member.
        let ports = crate::ports::free_loopback_ports(4 * n)?;
        let port = |i: usize, k: usize| ports[4 * i + k];
        let joins: Vec<String> = (0..SERVERS)
            .map(|i| format!("\"127.0.0.1:{}\"", port(i, 2)))
            .collect();
        let mut members = Vec::with_capacity(n);
        for i in 0..n {
            let server = i < SERVERS;
            let name = if server {
                format!("consul-server{}", i + 1)
            } else {
                format!("consul-agent{}", i - SERVERS + 1)
            };
            let member_dir = dir.join(&name);
            std::fs::create_dir_all(member_dir.join("data"))?;
            let (http, rpc, serf_lan, serf_wan) = (port(i, 0), port(i, 1), port(i, 2), port(i, 3));
            let client_proxy = Proxy::start(loopback(http)).await?;
            // A server binds its RPC port on an address of its own and
            // advertises 127.0.0.1 with the same port, where its RPC proxy
            // listens: every peer reaches it through that proxy.
            let rpc_bind = [127, 0, 0, 11 + i as u8];
            let rpc_proxy = if server {
                Some(Proxy::start_on(loopback(rpc), SocketAddr::from((rpc_bind, rpc))).await?)
            } else {
                None
            };
            let bind = if server {
                std::net::Ipv4Addr::from(rpc_bind)
            } else {
                std::net::Ipv4Addr::LOCALHOST
            };
            let mut config = format!(
                "node_name = \"{name}\"\ndatacenter = \"dc1\"\ndata_dir = \"{data}\"\n\
                 bind_addr = \"{bind}\"\nserf_lan = \"127.0.0.1\"\nserf_wan = \"127.0.0.1\"\n\
                 advertise_addr = \"127.0.0.1\"\nclient_addr = \"127.0.0.1\"\n\
                 retry_join = [{joins}]\nretry_interval = \"1s\"\n\
                 ports {{\n  http = {http}\n  server = {rpc}\n  serf_lan = {serf_lan}\n  serf_wan = {serf_wan}\n  dns = -1\n  grpc = -1\n}}\n\
                 performance {{\n  raft_multiplier = 1\n}}\n\
                 disable_update_check = true\nleave_on_terminate = false\nskip_leave_on_interrupt = true\n\
                 log_level = \"debug\"\n",
                data = member_dir.join("data").display(),
                joins = joins.join(", "),
            );
            if server {
                config.push_str(&format!("server = true\nbootstrap_expect = {SERVERS}\n"));
            }
            std::fs::write(member_dir.join("config.hcl"), config)?;
            members.push(Member {
                name,
                dir: member_dir,
                http,
                client_proxy,
                rpc_proxy,
                child: None,
            });
        }
        let mut cluster = ConsulCluster {
            bin: bin.consul.clone(),
            members,
        };
        for i in 0..n {
            cluster.spawn(i)?;
        }
        cluster.wait_healthy(START_WITHIN).await?;
        Ok(cluster)
    }

    fn spawn(&mut self, i: usize) -> Result<(), BoxError> {
        let member = &mut self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(member.dir.join("consul.log"))?;
        let child = Command::new(&self.bin)
            .arg("agent")
            .arg("-config-file")
            .arg(member.dir.join("config.hcl"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        member.child = Some(child);
        Ok(())
    }

    /// Number of fault targets: the three servers, then the two agents.
    pub fn members(&self) -> usize {
        self.members.len()
    }

    /// `consul-server1..3`, `consul-agent1..2`.
    pub fn name(&self, i: usize) -> String {
        self.members[i].name.clone()
    }

    /// A `consul://` URL reaching member `i`'s HTTP API through its client
    /// proxy, with `namespace` as the path and `query` (without `?`, may be
    /// empty) as the options.
    pub fn url(&self, i: usize, namespace: &str, query: &str) -> String {
        let query = query.trim_start_matches('?');
        let mut url = format!(
            "consul://{}/{}",
            self.members[i].client_proxy.addr(),
            namespace.trim_start_matches('/')
        );
        if !query.is_empty() {
            url.push('?');
            url.push_str(query);
        }
        url
    }

    /// The proxy between member `i`'s clients and its HTTP port.
    pub fn client_proxy(&self, i: usize) -> &Proxy {
        &self.members[i].client_proxy
    }

    /// For a server: every connection to its RPC (and Raft) port gets
    /// `mode`. For an agent: its client proxy gets `mode`. See the module
    /// docs for what this does and does not cut.
    pub fn isolate(&self, i: usize, mode: Mode) {
        let member = &self.members[i];
        match &member.rpc_proxy {
            Some(proxy) => proxy.set(mode),
            None => member.client_proxy.set(mode),
        }
    }

    /// Every proxy back to [`Mode::Pass`].
    pub fn heal(&self) {
        for member in &self.members {
            member.client_proxy.set(Mode::Pass);
            if let Some(proxy) = &member.rpc_proxy {
                proxy.set(Mode::Pass);
            }
        }
    }

    /// SIGKILLs member `i` and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            signal(&child, Signal::SIGKILL);
            if let Err(error) = child.wait() {
                tracing::debug!(member = %self.members[i].name, %error, "reaping failed");
            }
        }
    }

    /// SIGSTOPs member `i`.
    pub fn pause(&self, i: usize) {
        if let Some(child) = &self.members[i].child {
            signal(child, Signal::SIGSTOP);
        }
    }

    /// SIGCONTs member `i`.
    pub fn resume(&self, i: usize) {
        if let Some(child) = &self.members[i].child {
            signal(child, Signal::SIGCONT);
        }
    }

    /// Starts member `i` again (killing it first if it runs) with the same
    /// data directory and ports, and waits until the cluster is healthy.
    pub async fn restart(&mut self, i: usize) -> Result<(), BoxError> {
        self.kill(i);
        self.spawn(i)?;
        self.wait_healthy(START_WITHIN).await
    }

    /// The process id of member `i`; `None` while killed.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(Child::id)
    }

    /// Waits (at most `within`) until every member answers, knows the
    /// leader, sees three Raft peers, and the catalog lists every node.
    pub async fn wait_healthy(&self, within: Duration) -> Result<(), BoxError> {
        let deadline = Instant::now()
            .checked_add(within)
            .ok_or("wait_healthy: the bound is too large")?;
        loop {
            let last = match self.health().await {
                Ok(()) => return Ok(()),
                Err(why) => why,
            };
            if Instant::now() >= deadline {
                let mut message = format!("consul cluster not healthy within {within:?}: {last}");
                for member in &self.members {
                    message.push_str(&format!(
                        "\n--- {} log tail:\n{}",
                        member.name,
                        log_tail(&member.dir.join("consul.log"), 8)
                    ));
                }
                return Err(message.into());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn health(&self) -> Result<(), String> {
        for member in &self.members {
            if member.child.is_none() {
                return Err(format!("{} is not running", member.name));
            }
            let leader = http_get(member.http, "/v1/status/leader")
                .await
                .map_err(|e| format!("{}: {e}", member.name))?;
            if leader.trim().len() <= 2 {
                return Err(format!("{} knows no leader", member.name));
            }
            let peers = http_get(member.http, "/v1/status/peers")
                .await
                .map_err(|e| format!("{}: {e}", member.name))?;
            if peers.matches("127.0.0.1:").count() != SERVERS {
                return Err(format!("{} sees Raft peers {}", member.name, peers.trim()));
            }
        }
        let nodes = http_get(self.members[0].http, "/v1/catalog/nodes")
            .await
            .map_err(|e| format!("catalog: {e}"))?;
        for member in &self.members {
            if !nodes.contains(&format!("\"{}\"", member.name)) {
                return Err(format!("{} is not in the catalog yet", member.name));
            }
        }
        Ok(())
    }
}

impl Drop for ConsulCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

fn signal(child: &Child, which: Signal) {
    let Ok(pid) = i32::try_from(child.id()) else {
        return;
    };
    if let Err(error) = kill(Pid::from_raw(pid), which) {
        tracing::debug!(pid, %error, ?which, "signal failed");
    }
}

/// A plain HTTP/1.0 GET of `path` on 127.0.0.1:`port`; the body if 200.
async fn http_get(port: u16, path: &str) -> Result<String, String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(loopback(port)).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
            .await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        Ok::<_, io::Error>(answer)
    };
    let answer = tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .map_err(|_| format!("GET {path}: no answer within 2s"))?
        .map_err(|e| format!("GET {path}: {e}"))?;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("GET {path}: no HTTP answer"))?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        return Err(format!(
            "GET {path}: {}",
            head.lines().next().unwrap_or_default()
        ));
    }
    Ok(body.to_owned())
}

fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
