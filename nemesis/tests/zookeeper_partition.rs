//! A lock holder on a ZooKeeper follower that is cut from its peers (a
//! minority partition) must learn that its lock is lost before the leader
//! can give the lock to a waiter; afterwards the healed ensemble works.
//!
//! Needs `ANYKV_TEST_JAVA` and `ANYKV_TEST_ZK_CLASSPATH` (see
//! `scripts/services.sh env`); without them each test returns at once, and
//! under `CI=true` it fails.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anykv::LockOptions;
use anykv::StoreExt;
use anykv_nemesis::cluster::zookeeper::{BoxError, ZkBinaries, ZkEnsemble};
use anykv_nemesis::proxy::Mode;

/// A short session keeps the test quick. With the ensemble's tickTime of
/// 200 ms and syncLimit of 20, a cut-off follower serves its clients for 4 s.
const SESSION: &str = "session_ttl=4s";

fn binaries() -> Option<ZkBinaries> {
    let bin = ZkBinaries::from_env();
    if bin.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but ANYKV_TEST_JAVA / ANYKV_TEST_ZK_CLASSPATH are not set"
        );
        eprintln!("skipped: ANYKV_TEST_JAVA / ANYKV_TEST_ZK_CLASSPATH not set");
    }
    bin
}

static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "anykv-zk-ensemble-{}-{name}-{}",
        std::process::id(),
        NEXT_DIR.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The session, and the ensemble's tickTime so the locks can size their lease.
fn query(ensemble: &ZkEnsemble) -> String {
    format!("{SESSION}&tick_time={}ms", ensemble.tick_time().as_millis())
}

/// Holder through a follower, waiter through the leader, the follower cut
/// off with `mode`: the holder's `lost()` must fire before the waiter gets
/// the lock. Then heal; the lock can be taken through the isolated member.
async fn holder_on_isolated_follower(mode: Mode, name: &str) -> Result<(), BoxError> {
    let Some(bin) = binaries() else {
        return Ok(());
    };
    let dir = scratch(name);
    let ensemble = ZkEnsemble::start(&dir, &bin).await?;
    let leader = ensemble.leader().await.ok_or("no single leader")?;
    let follower = (0..ensemble.members())
        .find(|&i| i != leader)
        .ok_or("no follower")?;
    let q = query(&ensemble);
    let holder = anykv::open(&ensemble.url(follower, "part", &q)).await?;
    let waiter = anykv::open(&ensemble.url(leader, "part", &q)).await?;
    let session = holder.capabilities().session_ttl;

    let guard = holder
        .new_lock("l", LockOptions::new("holder"))
        .await?
        .lock()
        .await?;
    let lost = guard.lost();
    let lost_at = tokio::spawn(async move {
        lost.await;
        Instant::now()
    });
    let waiting = waiter.new_lock("l", LockOptions::new("waiter")).await?;
    let acquired_at = tokio::spawn(async move {
        let guard = waiting.lock().await;
        (Instant::now(), guard)
    });
    // Let the waiter queue up behind the holder.
    tokio::time::sleep(Duration::from_millis(500)).await;
    if acquired_at.is_finished() {
        return Err("the waiter got the lock before the partition".into());
    }

    let cut = Instant::now();
    ensemble.isolate(follower, mode);
    let bound = Duration::from_secs(20);
    let lost_at = tokio::time::timeout(bound, lost_at)
        .await
        .map_err(|_| format!("holder's lost() did not fire within {bound:?}"))??;
    let (acquired_at, taken) = tokio::time::timeout(bound, acquired_at)
        .await
        .map_err(|_| format!("waiter did not get the lock within {bound:?}"))??;
    let taken = taken?;
    let lost_after = lost_at - cut;
    let acquired_after = acquired_at - cut;
    eprintln!(
        "{name}: {} isolated with {mode:?}, session {session:?}: holder lost() after {lost_after:?}, \
         waiter acquired after {acquired_after:?}",
        ensemble.name(follower)
    );
    if lost_at >= acquired_at {
        return Err(format!(
            "two holders for {:?}: the waiter acquired after {acquired_after:?}, \
             the holder's lost() fired only after {lost_after:?}",
            lost_at - acquired_at
        )
        .into());
    }
    eprintln!(
        "{name}: lost() came {:?} before the waiter's grant",
        acquired_at - lost_at
    );

    // Heal: the ensemble recovers and the lock can be taken through the
    // member that was cut off.
    ensemble.heal();
    ensemble.wait_healthy(Duration::from_secs(30)).await?;
    taken.unlock().await?;
    drop(guard);
    let again = anykv::open(&ensemble.url(follower, "part", &q)).await?;
    let guard = tokio::time::timeout(
        Duration::from_secs(10),
        again.new_lock("l", LockOptions::new("again")).await?.lock(),
    )
    .await
    .map_err(|_| "lock not taken through the healed member within 10 s")??;
    if again.get("l").await?.value != "again" {
        return Err("the healed member's holder is not shown at the key".into());
    }
    guard.unlock().await?;
    for store in [again, waiter, holder] {
        let _ = store.close().await;
    }
    drop(ensemble);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

async fn bounded(case: impl std::future::Future<Output = Result<(), BoxError>>) {
    match tokio::time::timeout(Duration::from_secs(58), case).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("{e}"),
        Err(_) => panic!("case did not finish within 58 s"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_partition_holder_on_follower_loses_before_waiter_acquires() {
    bounded(holder_on_isolated_follower(Mode::Drop, "drop")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loud_partition_holder_on_follower_loses_before_waiter_acquires() {
    bounded(holder_on_isolated_follower(Mode::Reset, "reset")).await;
}
