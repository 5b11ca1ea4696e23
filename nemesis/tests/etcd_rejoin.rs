//! A member cut off from its peers must not depose the leader the majority
//! elected when the partition heals. Without Raft pre-vote (off by default
//! in etcd 3.4) the returning member's higher term forces an election, and
//! the cluster has no leader for seconds after the heal; the nemesis saw
//! this as a leaderless stretch well past its recovery bound.
//!
//! Needs `ANYKV_TEST_ETCD_BIN` (`scripts/services.sh env`); without it the
//! test returns at once, and under `CI=true` it fails.

use std::time::{Duration, Instant};

use anykv_nemesis::cluster::etcd::{EtcdBinaries, EtcdCluster};
use anykv_nemesis::cluster::process::BoxError;
use anykv_nemesis::proxy::Mode;

fn binaries() -> Option<EtcdBinaries> {
    let bin = EtcdBinaries::from_env();
    if bin.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but ANYKV_TEST_ETCD_BIN is not set"
        );
        eprintln!("skipped: ANYKV_TEST_ETCD_BIN not set");
    }
    bin
}

/// Polls (bounded) until a member other than `not` leads; its index and
/// the leader changes it has seen.
async fn new_leader(cluster: &EtcdCluster, not: usize) -> Result<(usize, u64), BoxError> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        for i in (0..cluster.members()).filter(|&i| i != not) {
            if let Some((true, changes)) = cluster.raft_status(i).await {
                return Ok((i, changes));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err("the majority elected no leader within 20 s".into())
}

#[tokio::test]
async fn a_healed_member_does_not_depose_the_majority_leader() -> Result<(), BoxError> {
    let Some(bin) = binaries() else {
        return Ok(());
    };
    let dir = std::env::temp_dir().join(format!("anykv-etcd-rejoin-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cluster = EtcdCluster::start(&dir, &bin).await?;
    let old = cluster.raft_leader().await.ok_or("no single Raft leader")?;

    // Cut the leader off silently, long enough for it to campaign several
    // times (election timeout 1 s) on its own.
    cluster.isolate(old, Mode::Drop);
    let (leader, changes) = new_leader(&cluster, old).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (still, during) = cluster.raft_status(leader).await.ok_or("no status")?;
    assert!(
        still,
        "the majority's leader lost its role during the partition"
    );
    assert_eq!(
        during, changes,
        "the majority changed leaders during the partition"
    );

    cluster.heal();
    cluster.wait_healthy(Duration::from_secs(60)).await?;
    // Give the returning member time to campaign, if it is going to.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (leads, after) = cluster.raft_status(leader).await.ok_or("no status")?;
    assert!(
        leads && after == changes,
        "the healed member deposed the leader: it leads {leads}, leader changes {changes} -> {after}"
    );
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
