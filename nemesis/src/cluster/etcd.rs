//! A 3-member etcd cluster on loopback.
//!
//! Every member's peer URL is advertised at a [`Proxy`] in front of its
//! real peer port, so all raft traffic to a member passes its proxy. The
//! proxy names each connection by the member process that owns the
//! connecting socket ([`owner_of_connection`]), so
//! [`EtcdCluster::isolate`] cuts both directions of one member's links —
//! its own inbound proxy for everyone, and the other members' proxies for
//! its connections only — while its clients stay connected through its
//! client proxy. That is the minority partition.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::process::{free_ports, http_get, log_tail, loopback, BoxError, Server};
use crate::proxy::{owner_of_connection, Classifier, Mode, Proxy};

/// Where the etcd binary is.
#[derive(Clone, Debug)]
pub struct EtcdBinaries {
    /// The `etcd` server binary.
    pub etcd: PathBuf,
}

impl EtcdBinaries {
    /// From `ANYKV_TEST_ETCD_BIN` (`scripts/services.sh env`).
    pub fn from_env() -> Option<EtcdBinaries> {
        let etcd = PathBuf::from(std::env::var_os("ANYKV_TEST_ETCD_BIN")?);
        etcd.exists().then_some(EtcdBinaries { etcd })
    }
}

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    peer_proxy: Proxy,
    client_proxy: Proxy,
    server: Option<Server>,
    data: PathBuf,
    log: PathBuf,
}

/// A running 3-member etcd cluster; dropping it kills every member.
pub struct EtcdCluster {
    bin: EtcdBinaries,
    members: Vec<Member>,
    initial_cluster: String,
    /// (member name, pid) of the running members, for the classifiers.
    pids: Arc<Mutex<Vec<(String, u32)>>>,
}

impl std::fmt::Debug for EtcdCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdCluster")
            .field("members", &self.members.len())
            .finish()
    }
}

impl EtcdCluster {
    /// Starts 3 members in `dir`, on free loopback ports; returns once the
    /// cluster is healthy.
    pub async fn start(dir: &Path, bin: &EtcdBinaries) -> Result<EtcdCluster, BoxError> {
        std::fs::create_dir_all(dir)?;
        let pids: Arc<Mutex<Vec<(String, u32)>>> = Arc::default();
        let ports = free_ports(6)?;
        let mut members = Vec::new();
        for i in 0..3 {
            let name = format!("etcd{i}");
            let client_port = ports[2 * i];
            let peer_port = ports[2 * i + 1];
            let classify_pids = pids.clone();
            let classifier: Classifier = Arc::new(move |peer| {
                let pids = classify_pids.lock().map(|p| p.clone()).unwrap_or_default();
                owner_of_connection(peer, &pids)
            });
            let peer_proxy =
                Proxy::start_classified(loopback(0), loopback(peer_port), Some(classifier)).await?;
            let client_proxy = Proxy::start(loopback(client_port)).await?;
            let data = dir.join(format!("{name}.data"));
            let _ = std::fs::remove_dir_all(&data);
            members.push(Member {
                log: dir.join(format!("{name}.log")),
                name,
                client_port,
                peer_port,
                peer_proxy,
                client_proxy,
                server: None,
                data,
            });
        }
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://{}", m.name, m.peer_proxy.addr()))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster {
            bin: bin.clone(),
            members,
            initial_cluster,
            pids,
        };
        for i in 0..3 {
            cluster.spawn(i)?;
        }
        cluster.wait_healthy(Duration::from_secs(60)).await?;
        Ok(cluster)
    }

    fn spawn(&mut self, i: usize) -> Result<(), BoxError> {
        let m = &self.members[i];
        let mut command = Command::new(&self.bin.etcd);
        command
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&m.data)
            .arg("--listen-client-urls")
            .arg(format!("http://127.0.0.1:{}", m.client_port))
            .arg("--advertise-client-urls")
            .arg(format!("http://127.0.0.1:{}", m.client_port))
            .arg("--listen-peer-urls")
            .arg(format!("http://127.0.0.1:{}", m.peer_port))
            .arg("--initial-advertise-peer-urls")
            .arg(format!("http://{}", m.peer_proxy.addr()))
            .arg("--initial-cluster")
            .arg(&self.initial_cluster)
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--initial-cluster-token")
            .arg("anykv-nemesis")
            // etcd 3.5 and later run with pre-vote on by default; 3.4 does
            // not. Without it a member that was cut off returns with a
            // higher term and deposes the healthy leader: measured here as
            // about 5 s with no leader after a partition healed.
            .arg("--pre-vote")
            .arg("--logger")
            .arg("zap")
            .arg("--log-level")
            .arg("warn");
        let server = Server::spawn(command, &m.log)?;
        if let Some(pid) = server.pid() {
            if let Ok(mut pids) = self.pids.lock() {
                pids.retain(|(n, _)| *n != m.name);
                pids.push((m.name.clone(), pid));
            }
        }
        self.members[i].server = Some(server);
        Ok(())
    }

    /// Number of members.
    pub fn members(&self) -> usize {
        self.members.len()
    }

    /// Member `i`'s name.
    pub fn name(&self, i: usize) -> String {
        self.members[i].name.clone()
    }

    /// An anykv URL reaching member `i` through its client proxy.
    pub fn url(&self, i: usize, namespace: &str, query: &str) -> String {
        let q = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        format!(
            "etcd://{}/{namespace}{q}",
            self.members[i].client_proxy.addr()
        )
    }

    /// Member `i`'s client proxy.
    pub fn client_proxy(&self, i: usize) -> &Proxy {
        &self.members[i].client_proxy
    }

    /// Cuts member `i` from its peers (both directions), with `mode`.
    pub fn isolate(&self, i: usize, mode: Mode) {
        let name = self.members[i].name.clone();
        for (j, m) in self.members.iter().enumerate() {
            if j == i {
                m.peer_proxy.set(mode);
            } else {
                m.peer_proxy.set_for(&name, mode);
            }
        }
    }

    /// Every link and client proxy back to `Pass`.
    pub fn heal(&self) {
        for m in &self.members {
            m.peer_proxy.heal();
            m.client_proxy.heal();
        }
    }

    /// SIGKILL member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut s) = self.members[i].server.take() {
            s.kill();
        }
    }

    /// SIGSTOP member `i`.
    pub fn pause(&self, i: usize) {
        if let Some(s) = &self.members[i].server {
            s.pause();
        }
    }

    /// SIGCONT member `i`.
    pub fn resume(&self, i: usize) {
        if let Some(s) = &self.members[i].server {
            s.resume();
        }
    }

    /// Starts member `i` again after a kill, on its data and ports.
    pub async fn restart(&mut self, i: usize) -> Result<(), BoxError> {
        self.kill(i);
        self.spawn(i)
    }

    /// Member `i`'s pid while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].server.as_ref().and_then(Server::pid)
    }

    /// Member `i`'s view of Raft from its `/metrics`: whether it is the
    /// leader, and how many leader changes it has seen. `None` if it does
    /// not answer.
    pub async fn raft_status(&self, i: usize) -> Option<(bool, u64)> {
        let port = self.members[i].client_port;
        let body = http_get(loopback(port), "/metrics", Duration::from_secs(2)).await?;
        let metric = |name: &str| -> Option<f64> {
            body.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
        };
        let leader = metric("etcd_server_is_leader ")? >= 1.0;
        let changes = metric("etcd_server_leader_changes_seen_total ")?;
        // A counter, printed as a float by the exporter.
        Some((leader, changes.max(0.0) as u64))
    }

    /// The member that reports itself the Raft leader, if exactly one does.
    pub async fn raft_leader(&self) -> Option<usize> {
        let mut leaders = Vec::new();
        for i in 0..self.members.len() {
            if let Some((true, _)) = self.raft_status(i).await {
                leaders.push(i);
            }
        }
        (leaders.len() == 1).then(|| leaders[0])
    }

    /// Waits until every member reports itself healthy (it has a leader
    /// and a quorum).
    pub async fn wait_healthy(&self, within: Duration) -> Result<(), BoxError> {
        let start = Instant::now();
        loop {
            let mut all = true;
            for m in &self.members {
                let body =
                    http_get(loopback(m.client_port), "/health", Duration::from_secs(2)).await;
                if !body.is_some_and(|b| b.contains("\"health\":\"true\"")) {
                    all = false;
                    break;
                }
            }
            if all {
                return Ok(());
            }
            if start.elapsed() > within {
                let tails: Vec<String> = self
                    .members
                    .iter()
                    .map(|m| format!("{}:\n{}", m.name, log_tail(&m.log, 15)))
                    .collect();
                return Err(format!(
                    "etcd cluster not healthy after {within:?}\n{}",
                    tails.join("\n")
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut s) = m.server.take() {
                s.kill();
            }
        }
    }
}
