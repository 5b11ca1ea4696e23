//! One shape over the clusters of every backend, for the driver.

use std::path::Path;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::cluster::consul::{ConsulBinaries, ConsulCluster};
use crate::cluster::etcd::{EtcdBinaries, EtcdCluster};
use crate::cluster::process::BoxError;
use crate::cluster::redis::{RedisBinaries, RedisServer};
use crate::cluster::zookeeper::{ZkBinaries, ZkEnsemble, TICK_TIME};
use crate::proxy::{Mode, Proxy};

/// A fault the driver can inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fault {
    /// SIGKILL the leading candidate's process (a new one takes its place).
    LeaderKill,
    /// SIGSTOP the leading candidate's process past its lock TTL, SIGCONT.
    LeaderPause,
    /// SIGKILL a candidate that does not lead.
    CandidateKill,
    /// SIGKILL the server member the leader talks to; restart it.
    MemberKill,
    /// SIGSTOP the server member the leader talks to; SIGCONT.
    MemberPause,
    /// Cut the leader's member from its peers, silently (every byte held).
    IsolateSilent,
    /// Cut the leader's member from its peers, with connection resets.
    IsolateReset,
    /// Cut the leader's client from its member, silently.
    ClientCut,
    /// SIGKILL the Consul client agent the leader talks to; restart it.
    AgentKill,
    /// SIGSTOP the Consul client agent the leader talks to; SIGCONT.
    AgentPause,
    /// Restart the Redis server with its data gone (no persistence).
    RestartEmpty,
}

impl Fault {
    /// Its name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Fault::LeaderKill => "leader SIGKILL",
            Fault::LeaderPause => "leader SIGSTOP",
            Fault::CandidateKill => "candidate SIGKILL",
            Fault::MemberKill => "member SIGKILL+restart",
            Fault::MemberPause => "member SIGSTOP",
            Fault::IsolateSilent => "minority partition (silent)",
            Fault::IsolateReset => "minority partition (reset)",
            Fault::ClientCut => "client cut (silent)",
            Fault::AgentKill => "agent SIGKILL+restart",
            Fault::AgentPause => "agent SIGSTOP",
            Fault::RestartEmpty => "restart, data lost",
        }
    }
}

/// A backend's cluster as the driver sees it.
pub trait Target: Send + Sync {
    /// The backend's name.
    fn backend(&self) -> &'static str;
    /// Fault targets (servers, then agents).
    fn members(&self) -> usize;
    /// Member `i`'s name.
    fn name(&self, i: usize) -> String;
    /// A URL through member `i`'s client proxy.
    fn url(&self, i: usize, namespace: &str, query: &str) -> String;
    /// Member `i`'s client proxy.
    fn client_proxy(&self, i: usize) -> &Proxy;
    /// Minority partition of member `i`.
    fn isolate(&self, i: usize, mode: Mode);
    /// Every proxy back to `Pass`.
    fn heal(&self);
    /// SIGKILL member `i`.
    fn kill(&mut self, i: usize);
    /// SIGSTOP member `i`.
    fn pause(&self, i: usize);
    /// SIGCONT member `i`.
    fn resume(&self, i: usize);
    /// Start member `i` again after a kill.
    fn restart(&mut self, i: usize) -> BoxFuture<'_, Result<(), BoxError>>;
    /// Wait until the cluster serves again.
    fn wait_healthy(&self, within: Duration) -> BoxFuture<'_, Result<(), BoxError>>;
    /// The faults that apply to this backend.
    fn faults(&self) -> Vec<Fault>;
    /// The members the candidates connect to, in order (cycled).
    fn candidate_members(&self) -> Vec<usize> {
        (0..self.members()).collect()
    }
    /// The members the followers connect to, in order (cycled).
    fn follower_members(&self) -> Vec<usize> {
        (0..self.members()).rev().collect()
    }
    /// Whether member `i` is a Consul client agent.
    fn is_agent(&self, _i: usize) -> bool {
        false
    }
    /// The URL query every child uses (session TTL and timeouts).
    fn query(&self) -> &'static str;
    /// Restart with the data gone ([`Fault::RestartEmpty`]).
    fn restart_empty(&mut self) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(async { Err("this backend has no data-losing restart".into()) })
    }
}

macro_rules! forward_cluster {
    () => {
        fn members(&self) -> usize {
            self.members()
        }
        fn name(&self, i: usize) -> String {
            self.name(i)
        }
        fn url(&self, i: usize, namespace: &str, query: &str) -> String {
            self.url(i, namespace, query)
        }
        fn client_proxy(&self, i: usize) -> &Proxy {
            self.client_proxy(i)
        }
        fn isolate(&self, i: usize, mode: Mode) {
            self.isolate(i, mode)
        }
        fn heal(&self) {
            self.heal()
        }
        fn kill(&mut self, i: usize) {
            self.kill(i)
        }
        fn pause(&self, i: usize) {
            self.pause(i)
        }
        fn resume(&self, i: usize) {
            self.resume(i)
        }
        fn restart(&mut self, i: usize) -> BoxFuture<'_, Result<(), BoxError>> {
            Box::pin(self.restart(i))
        }
        fn wait_healthy(&self, within: Duration) -> BoxFuture<'_, Result<(), BoxError>> {
            Box::pin(self.wait_healthy(within))
        }
    };
}

impl Target for EtcdCluster {
    forward_cluster!();
    fn backend(&self) -> &'static str {
        "etcd"
    }
    fn faults(&self) -> Vec<Fault> {
        vec![
            Fault::LeaderKill,
            Fault::LeaderPause,
            Fault::CandidateKill,
            Fault::MemberKill,
            Fault::MemberPause,
            Fault::IsolateSilent,
            Fault::IsolateReset,
            Fault::ClientCut,
        ]
    }
    fn query(&self) -> &'static str {
        "session_ttl=3s&request_timeout=1s&connect_timeout=1s"
    }
}

impl Target for RedisServer {
    forward_cluster!();
    fn backend(&self) -> &'static str {
        "redis"
    }
    fn faults(&self) -> Vec<Fault> {
        vec![
            Fault::LeaderKill,
            Fault::LeaderPause,
            Fault::CandidateKill,
            Fault::MemberKill,
            Fault::MemberPause,
            Fault::ClientCut,
            Fault::RestartEmpty,
        ]
    }
    fn candidate_members(&self) -> Vec<usize> {
        vec![0]
    }
    fn follower_members(&self) -> Vec<usize> {
        vec![0]
    }
    fn query(&self) -> &'static str {
        "session_ttl=2s&connect_timeout=1s"
    }
    fn restart_empty(&mut self) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(self.restart_empty())
    }
}

impl Target for ZkEnsemble {
    forward_cluster!();
    fn backend(&self) -> &'static str {
        "zookeeper"
    }
    fn faults(&self) -> Vec<Fault> {
        vec![
            Fault::LeaderKill,
            Fault::LeaderPause,
            Fault::CandidateKill,
            Fault::MemberKill,
            Fault::MemberPause,
            Fault::IsolateSilent,
            Fault::IsolateReset,
            Fault::ClientCut,
        ]
    }
    fn query(&self) -> &'static str {
        // The session must be at least about 3 × tickTime for the lock's
        // leader-confirmed lease (anykv::backend::zookeeper).
        const _: () = assert!(TICK_TIME.as_millis() == 200);
        "session_ttl=4s&tick_time=200ms&connect_timeout=2s"
    }
}

impl Target for ConsulCluster {
    forward_cluster!();
    fn backend(&self) -> &'static str {
        "consul"
    }
    fn faults(&self) -> Vec<Fault> {
        vec![
            Fault::LeaderKill,
            Fault::LeaderPause,
            Fault::CandidateKill,
            Fault::MemberKill,
            Fault::MemberPause,
            Fault::IsolateSilent,
            Fault::IsolateReset,
            Fault::ClientCut,
            Fault::AgentKill,
            Fault::AgentPause,
        ]
    }
    /// Two candidates behind the client agents, one on a server.
    fn candidate_members(&self) -> Vec<usize> {
        vec![3, 4, 0]
    }
    fn follower_members(&self) -> Vec<usize> {
        vec![1, 4]
    }
    fn is_agent(&self, i: usize) -> bool {
        i >= 3
    }
    fn query(&self) -> &'static str {
        // lock_delay ≥ session_ttl: see "One case the TTL rule does not
        // cover" in anykv::backend::consul (a stopped server's node is
        // removed by autopilot, which invalidates its sessions at once).
        "session_ttl=10s&lock_delay=10s&request_timeout=2s&connect_timeout=2s"
    }
}

/// Starts the cluster of `backend` in `dir`; `Ok(None)` if its binaries
/// are not installed.
pub async fn start(backend: &str, dir: &Path) -> Result<Option<Box<dyn Target>>, BoxError> {
    let target: Box<dyn Target> = match backend {
        "etcd" => match EtcdBinaries::from_env() {
            Some(bin) => Box::new(EtcdCluster::start(dir, &bin).await?),
            None => return Ok(None),
        },
        "consul" => match ConsulBinaries::from_env() {
            Some(bin) => Box::new(ConsulCluster::start(dir, &bin).await?),
            None => return Ok(None),
        },
        "zookeeper" => match ZkBinaries::from_env() {
            Some(bin) => Box::new(ZkEnsemble::start(dir, &bin).await?),
            None => return Ok(None),
        },
        "redis" => match RedisBinaries::from_env() {
            Some(bin) => Box::new(RedisServer::start(dir, &bin).await?),
            None => return Ok(None),
        },
        other => return Err(format!("unknown backend {other:?}").into()),
    };
    Ok(Some(target))
}

/// The backends the driver knows, in run order.
pub const BACKENDS: &[&str] = &["etcd", "consul", "zookeeper", "redis"];
