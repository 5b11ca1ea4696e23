//! Service discovery (anykv-recipes' `Discovery`) on this backend: watchers
//! on other handles see a registration at once, a killed instance goes with
//! its session, a lost session is followed by a new registration, and bad
//! names are refused before any I/O. Also the helper child's recipe role.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anykv::{Error, Store, StoreExt};
use anykv_recipes::discovery::{Discovery, Instance, InstanceStream};
use anykv_recipes::semaphore::{Permit, Semaphore};
use futures::StreamExt;

use crate::harness::{
    assert_err, eventually, next_item, CaseResult, ChildRole, Ctx, Done, PATIENCE,
};
use crate::Factory;

crate::cases::cases!("recipes":
    discovery_registered_instance_is_seen_by_every_watcher_within_a_second,
    discovery_killed_instance_is_gone_within_session_ttl_and_slack,
    discovery_instance_is_registered_again_after_its_session_is_lost,
    discovery_names_with_a_slash_are_refused_naming_the_key,
);

/// Where the cases (and the child) register.
const PREFIX: &str = "services";
const SERVICE: &str = "web";

/// The semaphore the child holds, and its number of permits.
pub(crate) const CHILD_SEMAPHORE: &str = "sem";

/// The helper child's recipe role: registers `web/child` and takes the one
/// permit of the semaphore `sem`, on one handle.
pub(crate) async fn hold(
    factory: Factory,
    namespace: String,
) -> Result<(Arc<dyn Store>, anykv_recipes::Registration, Permit), Error> {
    let store = factory(namespace).await?;
    let registration = Discovery::new(store.clone(), PREFIX)
        .register(Instance::new(SERVICE, "child", "127.0.0.1:1"))
        .await?;
    let permit = Semaphore::new(store.clone(), CHILD_SEMAPHORE, 1)
        .acquire()
        .await?;
    Ok((store, registration, permit))
}

/// The ids in the next set a watcher shows.
async fn next_ids(sets: &mut InstanceStream, what: &str) -> Vec<String> {
    next_item(sets, what)
        .await
        .into_iter()
        .map(|i| i.id)
        .collect()
}

/// Reads sets until one satisfies `want`, failing after `within`.
async fn wait_for_set(
    sets: &mut InstanceStream,
    within: Duration,
    what: &str,
    want: impl Fn(&[Instance]) -> bool,
) -> Result<Vec<Instance>, String> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, sets.next()).await {
            Ok(Some(set)) if want(&set) => return Ok(set),
            Ok(Some(_)) => {}
            Ok(None) => return Err(format!("{what}: the instance stream ended")),
            Err(_) => return Err(format!("{what}: not seen within {within:?}")),
        }
    }
}

async fn discovery_registered_instance_is_seen_by_every_watcher_within_a_second(
    cx: Ctx,
) -> CaseResult {
    let mut watchers = Vec::new();
    for _ in 0..3 {
        let store = cx.store().await;
        let (mut sets, errors) = Discovery::new(store, PREFIX).watch(SERVICE).await?;
        assert_eq!(
            next_ids(&mut sets, "initial set").await,
            Vec::<String>::new()
        );
        watchers.push((sets, errors));
    }
    let owner = cx.store().await;
    let discovery = Discovery::new(owner.clone(), PREFIX);
    let web1 = Instance::new(SERVICE, "web-1", "10.0.0.1:80").with_metadata("zone", "a");
    let start = Instant::now();
    let registration = discovery.register(web1.clone()).await?;
    for (i, (sets, _)) in watchers.iter_mut().enumerate() {
        let left = Duration::from_secs(1).saturating_sub(start.elapsed());
        let set = wait_for_set(sets, left, &format!("watcher {i}"), |s| !s.is_empty()).await?;
        assert_eq!(
            set,
            vec![web1.clone()],
            "watcher {i} sees the instance as written"
        );
    }
    assert_eq!(discovery.instances(SERVICE).await?, vec![web1.clone()]);

    // A second instance: every watcher gets the full set.
    let web2 = Instance::new(SERVICE, "web-2", "10.0.0.2:80");
    let second = discovery.register(web2.clone()).await?;
    for (i, (sets, _)) in watchers.iter_mut().enumerate() {
        let set = wait_for_set(sets, PATIENCE, &format!("watcher {i}"), |s| s.len() == 2).await?;
        assert_eq!(set, vec![web1.clone(), web2.clone()]);
    }

    // Deregistering (and dropping) removes them for everyone.
    registration.deregister().await?;
    assert_eq!(discovery.instances(SERVICE).await?, vec![web2.clone()]);
    drop(second);
    for (i, (sets, _)) in watchers.iter_mut().enumerate() {
        wait_for_set(sets, PATIENCE, &format!("watcher {i}"), |s| s.is_empty()).await?;
    }
    Ok(Done::Passed)
}

async fn discovery_killed_instance_is_gone_within_session_ttl_and_slack(cx: Ctx) -> CaseResult {
    let observer = cx.store().await;
    let caps = observer.capabilities();
    if !caps.shared_between_processes {
        return Ok(Done::NotApplicable(format!(
            "{} stores live in one process: no other process can register",
            caps.backend
        )));
    }
    let discovery = Discovery::new(observer.clone(), PREFIX);
    let (mut sets, _errors) = discovery.watch(SERVICE).await?;
    let mut child = cx.spawn_child_as(ChildRole::RecipeHolder);
    let seen = wait_for_set(&mut sets, PATIENCE, "the child's instance", |s| {
        s.iter().any(|i| i.id == "child")
    })
    .await?;
    assert_eq!(seen[0].endpoint, "127.0.0.1:1");

    child.kill();
    let bound = caps.session_ttl + caps.session_slack + Duration::from_secs(2);
    wait_for_set(&mut sets, bound, "the killed child's instance gone", |s| {
        s.is_empty()
    })
    .await?;
    assert!(discovery.instances(SERVICE).await?.is_empty());
    Ok(Done::Passed)
}

async fn discovery_instance_is_registered_again_after_its_session_is_lost(cx: Ctx) -> CaseResult {
    let owner = cx.store().await;
    let observer = cx.store().await;
    let discovery = Discovery::new(owner.clone(), PREFIX);
    let registration = discovery
        .register(Instance::new(SERVICE, "web-1", "10.0.0.1:80"))
        .await?;
    let key = registration.key().to_owned();
    let before = observer.get(&key).await?.last_index;

    let session = owner.session();
    match session.expire().await {
        Err(Error::Unsupported { .. }) => {
            return Ok(Done::NotApplicable(format!(
                "{} cannot expire a session on purpose",
                owner.capabilities().backend
            )))
        }
        other => other?,
    }
    eventually(PATIENCE, "a new session", || async {
        session.generation() > 1
    })
    .await;
    // Written again, without any call, after the old session's key went.
    eventually(PATIENCE, "the instance registered again", || async {
        matches!(observer.get_opt(&key).await, Ok(Some(pair)) if pair.last_index > before)
    })
    .await;
    let observed = Discovery::new(observer.clone(), PREFIX);
    let ids: Vec<String> = observed
        .instances(SERVICE)
        .await?
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(ids, vec!["web-1".to_owned()]);

    // It stays (bound to the new session), and deregistering still works.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(observer.get_opt(&key).await?.is_some());
    registration.deregister().await?;
    assert_eq!(observer.get_opt(&key).await?, None);
    Ok(Done::Passed)
}

async fn discovery_names_with_a_slash_are_refused_naming_the_key(cx: Ctx) -> CaseResult {
    let store = cx.store().await;
    let discovery = Discovery::new(store.clone(), PREFIX);
    for (service, id, key) in [
        ("web/x", "1", "services/web/x"),
        ("web", "a/b", "services/web/a/b"),
        ("web", "", "services/web/"),
    ] {
        let refused = discovery
            .register(Instance::new(service, id, "127.0.0.1:1"))
            .await;
        match refused {
            Err(Error::InvalidArgument { key: named, .. }) => assert_eq!(named, key),
            other => panic!("{service:?}/{id:?}: expected InvalidArgument, got {other:?}"),
        }
    }
    assert_err!(
        discovery.watch("a/b").await.map(|_| ()),
        Error::InvalidArgument { .. }
    );
    assert_err!(discovery.instances("").await, Error::InvalidArgument { .. });
    assert!(store.list("").await?.is_empty(), "nothing was written");
    Ok(Done::Passed)
}
