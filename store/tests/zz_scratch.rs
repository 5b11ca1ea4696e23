#![cfg(feature = "consul")]
use anykv::{PutOptions, Store};
use futures::StreamExt;

fn tasks() -> usize { tokio::runtime::Handle::current().metrics().num_alive_tasks() }

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_tasks() {
    let url = std::env::var("ANYKV_TEST_CONSUL_URL").unwrap();
    let store = anykv::open(&format!("{url}/zz-scratch")).await.unwrap();
    println!("after open {}", tasks());
    store.put("w", "v".into(), PutOptions::new()).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    println!("before {}", tasks());
    let mut watches = Vec::new();
    for _ in 0..5 {
        let mut w = store.watch("w").await.unwrap();
        w.next().await.unwrap().unwrap();
        println!("  watch {}", tasks());
        watches.push(w);
    }
    store.put("w", "v2".into(), PutOptions::new()).await.unwrap();
    println!("after put {}", tasks());
    for w in &mut watches { w.next().await.unwrap().unwrap(); println!("  next {}", tasks()); }
    drop(watches);
    for _ in 0..10 { tokio::time::sleep(std::time::Duration::from_millis(500)).await; println!("after drop {}", tasks()); }
    store.delete_tree("").await.unwrap();
}
