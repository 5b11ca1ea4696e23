use anykv::{LockOptions, PutOptions, Store};
use futures::StreamExt;
use std::time::Duration;

fn url(ns: &str) -> String {
    format!(
        "zk://127.0.0.1:12181/smoke-{}-{}?session_ttl=3s&container_check_interval=1s",
        ns,
        std::process::id()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn smoke() {
    let s = anykv::open(&url("a")).await.unwrap();
    s.delete_tree("").await.unwrap();
    println!("caps {:?}", s.capabilities());
    let p = s.put("a", "1".into(), PutOptions::new()).await.unwrap();
    let p2 = s.put("a/b", "".into(), PutOptions::new()).await.unwrap();
    let _ = s.put("a/b/c", "x".into(), PutOptions::new()).await.unwrap();
    let _ = s
        .put("🔑/50%", "emoji".into(), PutOptions::new())
        .await
        .unwrap();
    println!("{:?} {:?}", p, p2);
    assert_eq!(s.get("a/b").await.unwrap().value, "");
    let l = s.list("").await.unwrap();
    println!("list {:?}", l.iter().map(|p| &p.key).collect::<Vec<_>>());
    assert_eq!(s.list("a").await.unwrap().len(), 2);
    // CAS ABA
    let old = s.get("a").await.unwrap();
    s.delete("a").await.unwrap();
    assert!(s.get("a").await.unwrap_err().is_not_found());
    s.put("a", "2".into(), PutOptions::new()).await.unwrap();
    let e = s
        .atomic_put("a", "3".into(), Some(&old), PutOptions::new())
        .await
        .unwrap_err();
    println!("aba {e}");
    let cur = s.get("a").await.unwrap();
    let n = s
        .atomic_put("a", "3".into(), Some(&cur), PutOptions::new())
        .await
        .unwrap();
    assert!(n.last_index > cur.last_index);
    assert!(s
        .atomic_put("a", "3".into(), None, PutOptions::new())
        .await
        .is_err());
    s.atomic_delete("a", &n).await.unwrap();
    // watch
    let mut w = s.watch("w").await.unwrap();
    assert_eq!(w.next().await.unwrap().unwrap(), None);
    s.put("w", "1".into(), PutOptions::new()).await.unwrap();
    println!("watch {:?}", w.next().await);
    s.delete("w").await.unwrap();
    println!("watch {:?}", w.next().await);
    let mut t = s.watch_tree("t").await.unwrap();
    println!("tree {:?}", t.next().await);
    s.put("t/x/y", "1".into(), PutOptions::new()).await.unwrap();
    println!("tree {:?}", t.next().await);
    // ttl
    let start = std::time::Instant::now();
    s.put(
        "ttl",
        "1".into(),
        PutOptions::ttl(Duration::from_millis(1500)),
    )
    .await
    .unwrap();
    let mut wt = s.watch("ttl").await.unwrap();
    wt.next().await;
    println!("ttl gone {:?} after {:?}", wt.next().await, start.elapsed());
    s.put(
        "ttl2",
        "1".into(),
        PutOptions::ttl(Duration::from_millis(1500)),
    )
    .await
    .unwrap();
    s.put("ttl2", "2".into(), PutOptions::new()).await.unwrap();
    // ephemeral + close
    let s2 = anykv::open(&url("a")).await.unwrap();
    s2.put("eph", "e".into(), PutOptions::ephemeral())
        .await
        .unwrap();
    assert!(s.exists("eph").await.unwrap());
    let start = std::time::Instant::now();
    s2.close().await.unwrap();
    println!("close took {:?}", start.elapsed());
    assert!(!s.exists("eph").await.unwrap());
    // lock
    let lock = s.new_lock("lk", LockOptions::new("me")).await.unwrap();
    let g = lock.lock().await.unwrap();
    println!("token {}", g.fencing_token());
    assert_eq!(s.get("lk").await.unwrap().value, "me");
    let s3 = anykv::open(&url("a")).await.unwrap();
    let lock3 = s3.new_lock("lk", LockOptions::new("other")).await.unwrap();
    assert!(lock3.try_lock().await.is_err());
    let h = tokio::spawn(async move {
        let g = lock3.lock().await.unwrap();
        let t = g.fencing_token();
        g.unlock().await.unwrap();
        t
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t1 = g.fencing_token();
    g.unlock().await.unwrap();
    let t2 = h.await.unwrap();
    println!("tokens {t1} {t2}");
    assert!(t2 > t1);
    // key deleted -> lost, lock free again
    let g = lock.lock().await.unwrap();
    s3.delete("lk").await.unwrap();
    tokio::time::timeout(Duration::from_secs(2), g.lost())
        .await
        .expect("lost fires");
    let lock3 = s3.new_lock("lk", LockOptions::new("other")).await.unwrap();
    let t0 = std::time::Instant::now();
    let g3 = tokio::time::timeout(Duration::from_secs(2), lock3.lock())
        .await
        .expect("free soon")
        .unwrap();
    println!("reacquired after key delete in {:?}", t0.elapsed());
    assert!(matches!(
        g.unlock().await,
        Err(anykv::Error::LockLost { .. })
    ));
    assert_eq!(s.get("lk").await.unwrap().value, "other");
    // close ends watches and releases locks
    let mut wc = s3.watch("lk").await.unwrap();
    wc.next().await;
    s3.close().await.unwrap();
    println!(
        "after close: {:?}",
        wc.next().await.map(|r| r.map_err(|e| e.to_string()))
    );
    println!("after close: {:?}", wc.next().await.is_none());
    assert!(g3.is_lost());
    assert!(!s.exists("lk").await.unwrap());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    println!("ttl2 still {:?}", s.get("ttl2").await.map(|p| p.value));
    s.delete_tree("").await.unwrap();
    println!("after delete_tree {:?}", s.list("").await);
    s.close().await.unwrap();
}
