//! The `Store` conformance suite against a real etcd (`EtcdStore`), plus what is particular to
//! it: namespaces keep stores apart, and a stopped etcd is `Unavailable`, not a hang.

use std::sync::Arc;
use std::time::Duration;

use croupier_registry::store::conformance::{etcd_or_skip, run_in_turn};
use croupier_registry::store::etcd::{EtcdOptions, EtcdStore};
use croupier_registry::store::{Store, StoreError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_etcd() {
    let Some(etcd) = etcd_or_skip().await else {
        return;
    };
    let etcd = Arc::new(etcd);
    run_in_turn(|| {
        let etcd = etcd.clone();
        async move { Arc::new(etcd.store().await) as Arc<dyn Store> }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_keep_stores_apart_and_a_dead_etcd_is_unavailable() {
    let Some(mut etcd) = etcd_or_skip().await else {
        return;
    };
    let a = etcd.store().await;
    let b = etcd.store().await;
    a.put("/k", b"a".to_vec(), None).await.unwrap();
    assert_eq!(b.get("/k").await.unwrap(), None);
    let got = a.range("/").await.unwrap().kvs;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].key, "/k", "the namespace is stripped");

    etcd.kill();
    let started = std::time::Instant::now();
    let err = a.put("/k", b"x".to_vec(), None).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(15), "no hang");
    let err = EtcdStore::connect(EtcdOptions {
        endpoints: vec![etcd.endpoint.clone()],
        timeout: Some(Duration::from_millis(500)),
        ..Default::default()
    })
    .await
    .err()
    .expect("connecting to a dead etcd fails");
    assert!(err.to_string().contains(&etcd.endpoint), "{err}");
}
